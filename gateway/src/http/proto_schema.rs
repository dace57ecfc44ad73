//! OpenAPI schemas of the protocol objects the API returns (`SendAck`,
//! `SyncBatch`, ...), read from the schema's own descriptor set, so the
//! document states exactly what the pbjson serializers write and no field
//! is described twice. The mapping is protobuf's canonical JSON with the
//! schema's field names: 64-bit integers as decimal strings, `bytes` as
//! base64, enums by name, default values (0, "", false, empty lists)
//! omitted.

use std::collections::HashMap;
use std::sync::OnceLock;

use hanmadi_proto::prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type as FieldType};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, RefBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// `FileDescriptorProto.message_type`, `.enum_type` and
/// `DescriptorProto.field` tags: the steps of a `SourceCodeInfo` path.
const MESSAGE_TYPE: i32 = 4;
const ENUM_TYPE: i32 = 5;
const FIELD: i32 = 2;

/// The package prefix of fully qualified type names.
const PACKAGE: &str = ".hanmadi.v1.";

/// The schema's messages and enums with their comments.
struct Descriptors {
    messages: Vec<DescriptorProto>,
    enums: HashMap<String, (Vec<String>, Option<String>)>,
    comments: HashMap<Vec<i32>, String>,
}

fn descriptors() -> &'static Descriptors {
    static DESCRIPTORS: OnceLock<Descriptors> = OnceLock::new();
    DESCRIPTORS.get_or_init(|| {
        // Built into the binary by proto's build script; if it ever failed
        // to decode, the document would only lack these schemas' fields.
        let set = FileDescriptorSet::decode(hanmadi_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let mut out = Descriptors {
            messages: Vec::new(),
            enums: HashMap::new(),
            comments: HashMap::new(),
        };
        for file in set.file.into_iter().filter(|f| f.package() == "hanmadi.v1") {
            let base = out.messages.len() as i32;
            for location in file.source_code_info.iter().flat_map(|i| &i.location) {
                let Some(text) = location.leading_comments.as_deref() else {
                    continue;
                };
                let mut path = location.path.clone();
                if path.first() == Some(&MESSAGE_TYPE) && path.len() >= 2 {
                    path[1] += base;
                }
                out.comments.insert(path, text.trim().replace("\n ", "\n"));
            }
            for (k, e) in file.enum_type.iter().enumerate() {
                let values = e.value.iter().map(|v| v.name().to_owned()).collect();
                let comment = out.comments.get(&vec![ENUM_TYPE, k as i32]).cloned();
                out.enums
                    .insert(format!("{PACKAGE}{}", e.name()), (values, comment));
            }
            out.messages.extend(file.message_type);
        }
        out
    })
}

fn find(name: &str) -> Option<(usize, &'static DescriptorProto)> {
    descriptors()
        .messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.name() == name)
}

fn short_name(type_name: &str) -> &str {
    type_name.strip_prefix(PACKAGE).unwrap_or(type_name)
}

fn field_schema(field: &FieldDescriptorProto, comment: Option<&String>) -> RefOr<Schema> {
    let repeated = field.label() == Label::Repeated;
    // A list's items need no copy of the list's description.
    let (list_comment, item_comment) = if repeated {
        (comment, None)
    } else {
        (None, comment)
    };
    let scalar = |t: Type, format: Option<SchemaFormat>| {
        ObjectBuilder::new()
            .schema_type(t)
            .format(format)
            .description(item_comment.cloned())
    };
    let custom = |f: &str| Some(SchemaFormat::Custom(f.to_owned()));
    let one: RefOr<Schema> = match field.r#type() {
        FieldType::Uint64 | FieldType::Fixed64 => scalar(Type::String, custom("uint64"))
            .pattern(Some("^[0-9]+$"))
            .into(),
        FieldType::Int64 | FieldType::Sint64 | FieldType::Sfixed64 => {
            scalar(Type::String, custom("int64"))
                .pattern(Some("^-?[0-9]+$"))
                .into()
        }
        FieldType::Uint32 | FieldType::Fixed32 => scalar(Type::Integer, custom("uint32"))
            .minimum(Some(0))
            .into(),
        FieldType::Int32 | FieldType::Sint32 | FieldType::Sfixed32 => scalar(
            Type::Integer,
            Some(SchemaFormat::KnownFormat(KnownFormat::Int32)),
        )
        .into(),
        FieldType::Double | FieldType::Float => scalar(Type::Number, None).into(),
        FieldType::Bool => scalar(Type::Boolean, None).into(),
        FieldType::String => scalar(Type::String, None).into(),
        FieldType::Bytes => scalar(
            Type::String,
            Some(SchemaFormat::KnownFormat(KnownFormat::Byte)),
        )
        .into(),
        FieldType::Enum => {
            let (values, enum_comment) = descriptors()
                .enums
                .get(field.type_name())
                .cloned()
                .unwrap_or_default();
            let text = [item_comment.cloned(), enum_comment]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("\n\n");
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(values))
                .description(Some(text))
                .into()
        }
        FieldType::Message | FieldType::Group => RefBuilder::new()
            .ref_location_from_schema_name(short_name(field.type_name()))
            .description(item_comment.cloned())
            .into(),
    };
    if repeated {
        ArrayBuilder::new()
            .items(one)
            .description(list_comment.cloned())
            .into()
    } else {
        one
    }
}

/// The schema of message `name` of package `hanmadi.v1`.
fn message_schema(name: &str) -> RefOr<Schema> {
    let Some((i, message)) = find(name) else {
        return ObjectBuilder::new().schema_type(Type::Object).into();
    };
    let comments = &descriptors().comments;
    let path = [MESSAGE_TYPE, i as i32];
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(comments.get(path.as_slice()).cloned());
    for (j, field) in message.field.iter().enumerate() {
        let comment = comments.get([MESSAGE_TYPE, i as i32, FIELD, j as i32].as_slice());
        object = object.property(field.name(), field_schema(field, comment));
    }
    object.into()
}

/// Adds the schemas of every message `name` refers to, transitively.
fn referenced_schemas(name: &str, out: &mut Vec<(String, RefOr<Schema>)>) {
    let Some((_, message)) = find(name) else {
        return;
    };
    for field in &message.field {
        if field.r#type() != FieldType::Message {
            continue;
        }
        let child = short_name(field.type_name());
        if out.iter().any(|(n, _)| n == child) {
            continue;
        }
        out.push((child.to_owned(), message_schema(child)));
        referenced_schemas(child, out);
    }
}

/// A marker type per protocol message the API returns, standing in for the
/// generated type in `#[utoipa::path]` and `#[schema(value_type)]`.
macro_rules! proto_schemas {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("The protocol's `hanmadi.v1.", stringify!($name), "` in JSON.")]
        #[derive(Debug)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                message_schema(stringify!($name))
            }
        }

        impl ToSchema for $name {
            fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
                referenced_schemas(stringify!($name), out);
            }
        }
    )*};
}

proto_schemas!(SendAck, SyncBatch, HistoryPage, Conversation, Message);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_come_from_the_descriptor() {
        let json = serde_json::to_value(message_schema("SendAck")).expect("json");
        let props = &json["properties"];
        assert_eq!(props["message_id"]["type"], "string", "{json}");
        assert_eq!(props["client_msg_id"]["format"], "byte", "{json}");
        assert_eq!(
            props["conversation"]["$ref"],
            "#/components/schemas/Conversation"
        );
        assert!(json["description"].as_str().is_some_and(|d| !d.is_empty()));
        let mut out = Vec::new();
        referenced_schemas("SyncBatch", &mut out);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        for n in ["Deliver", "Message", "Conversation", "DirectConversation"] {
            assert!(names.contains(&n), "{names:?}");
        }
    }
}
