//! The schema documents itself: `hanmadi.proto` is the source of
//! `docs/PROTOCOL.md`, so every message, enum, oneof, field and enum value
//! carries a comment.

const SCHEMA: &str = include_str!("../hanmadi.proto");

/// Whether a trimmed line declares something that needs a comment.
fn is_declaration(line: &str) -> bool {
    let starts_block = ["message ", "enum ", "oneof "]
        .iter()
        .any(|keyword| line.starts_with(keyword));
    // Fields (`type name = N;`) and enum values (`NAME = N;`).
    let is_numbered = line.ends_with(';')
        && line
            .split_once('=')
            .is_some_and(|(_, number)| number.trim_end_matches(';').trim().parse::<u32>().is_ok());
    starts_block || is_numbered
}

#[test]
fn every_declaration_has_a_comment() {
    let mut previous = "";
    let mut missing = Vec::new();
    for (number, line) in SCHEMA.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            previous = line;
            continue;
        }
        if is_declaration(line) && !previous.starts_with("//") {
            missing.push(format!("{}: {line}", number + 1));
        }
        previous = line;
    }
    assert!(missing.is_empty(), "uncommented:\n{}", missing.join("\n"));
}

#[test]
fn descriptor_set_is_embedded() {
    let needle = b"hanmadi.v1";
    assert!(hanmadi_proto::FILE_DESCRIPTOR_SET
        .windows(needle.len())
        .any(|window| window == needle));
}
