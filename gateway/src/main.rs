//! The `hanmadi` binary.

fn main() {
    eprintln!("hanmadi: the server is not implemented yet");
    std::process::exit(2);
}
