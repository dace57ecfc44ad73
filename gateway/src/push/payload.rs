//! Push request bodies: Hanmadi's own JSON shape, and Gorush's
//! `POST /api/push` shape (one notification per platform it serves).

use base64::Engine as _;
use bytes::Bytes;
use hanmadi_proto::{pb, ConversationId};
use hanmadi_storage::chat::{PushContent, PushPlatform};
use serde::Serialize;

/// Longest preview, in characters; longer bodies are cut and end in `…`.
pub const MAX_PREVIEW_CHARS: usize = 200;

/// Gorush's platform numbers.
const GORUSH_IOS: u8 = 1;
const GORUSH_ANDROID: u8 = 2;

/// Which JSON the webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushFormat {
    /// Hanmadi's own shape (`docs/PROTOCOL.md`, "Push notifications").
    #[default]
    Hanmadi,
    /// Gorush's `POST /api/push` request: one notification per platform
    /// (APNs as iOS, FCM as Android); Web Push and other tokens are left
    /// out, and a user with none of the two gets no request.
    Gorush,
}

impl std::str::FromStr for PushFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hanmadi" => Ok(Self::Hanmadi),
            "gorush" => Ok(Self::Gorush),
            _ => Err(format!(
                "unknown push format {s:?}: expected hanmadi or gorush"
            )),
        }
    }
}

impl std::fmt::Display for PushFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hanmadi => "hanmadi",
            Self::Gorush => "gorush",
        })
    }
}

/// `body` cut to [`MAX_PREVIEW_CHARS`] characters.
pub fn preview(body: &str) -> String {
    match body.char_indices().nth(MAX_PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

/// How the recipient names the conversation: the peer of a direct one,
/// the group of a group one.
fn conversation_ref(content: &PushContent) -> (&'static str, Option<String>, Option<String>) {
    match content.conversation {
        ConversationId::Direct { .. } => (
            "direct",
            content
                .conversation
                .peer_of(content.user)
                .map(|p| p.to_string()),
            None,
        ),
        ConversationId::Group(g) => ("group", None, Some(g.to_string())),
    }
}

#[derive(Serialize)]
struct HanmadiDevice<'a> {
    device_id: &'a str,
    platform: &'static str,
    token: &'a str,
}

#[derive(Serialize)]
struct HanmadiPush<'a> {
    idempotency_key: &'a str,
    user_id: String,
    unseen: u64,
    conversation: pb::Conversation,
    conversation_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
    message_id: String,
    sender_id: String,
    sender_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    preview: Option<String>,
    sent_at: u64,
    cursor: String,
    devices: Vec<HanmadiDevice<'a>>,
}

#[derive(Serialize)]
struct GorushRequest<'a> {
    notifications: Vec<GorushNotification<'a>>,
}

#[derive(Serialize)]
struct GorushNotification<'a> {
    tokens: Vec<&'a str>,
    platform: u8,
    title: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u64>,
    #[serde(rename = "thread-id", skip_serializing_if = "Option::is_none")]
    thread_id: Option<String>,
    priority: &'static str,
    sound: &'static str,
    /// String values only: FCM data payloads are string maps.
    data: std::collections::BTreeMap<&'static str, String>,
}

/// The request body of a push in `format`, or `None` when that format
/// cannot reach the user.
pub fn build(
    format: PushFormat,
    with_preview: bool,
    content: &PushContent,
    key: &str,
) -> Option<Bytes> {
    let (kind, peer_id, group_id) = conversation_ref(content);
    let cursor = base64::engine::general_purpose::STANDARD.encode(content.cursor.as_bytes());
    let body = match format {
        PushFormat::Hanmadi => serde_json::to_vec(&HanmadiPush {
            idempotency_key: key,
            user_id: content.user.to_string(),
            unseen: content.unseen,
            conversation: content.conversation.into(),
            conversation_type: kind,
            peer_id,
            group_id,
            message_id: content.message_id.to_string(),
            sender_id: content.sender.to_string(),
            sender_name: &content.sender_name,
            preview: with_preview.then(|| preview(&content.body)),
            sent_at: content.sent_at,
            cursor,
            devices: content
                .devices
                .iter()
                .map(|d| HanmadiDevice {
                    device_id: &d.device_id,
                    platform: d.platform.as_str(),
                    token: &d.token,
                })
                .collect(),
        }),
        PushFormat::Gorush => {
            let message = if with_preview {
                preview(&content.body)
            } else if content.unseen == 1 {
                "New message".to_owned()
            } else {
                format!("{} new messages", content.unseen)
            };
            let mut data = std::collections::BTreeMap::new();
            data.insert("idempotency_key", key.to_owned());
            data.insert("user_id", content.user.to_string());
            data.insert("unseen", content.unseen.to_string());
            data.insert("conversation_type", kind.to_owned());
            if let Some(p) = &peer_id {
                data.insert("peer_id", p.clone());
            }
            if let Some(g) = &group_id {
                data.insert("group_id", g.clone());
            }
            data.insert("message_id", content.message_id.to_string());
            data.insert("sender_id", content.sender.to_string());
            data.insert("cursor", cursor);
            let title = if content.sender_name.is_empty() {
                "Hanmadi"
            } else {
                content.sender_name.as_str()
            };
            let notifications: Vec<GorushNotification<'_>> = [
                (PushPlatform::Apns, GORUSH_IOS),
                (PushPlatform::Fcm, GORUSH_ANDROID),
            ]
            .into_iter()
            .filter_map(|(platform, number)| {
                let tokens: Vec<&str> = content
                    .devices
                    .iter()
                    .filter(|d| d.platform == platform)
                    .map(|d| d.token.as_str())
                    .collect();
                (!tokens.is_empty()).then(|| GorushNotification {
                    tokens,
                    platform: number,
                    title,
                    message: message.clone(),
                    badge: (number == GORUSH_IOS).then_some(content.unseen),
                    thread_id: (number == GORUSH_IOS).then(|| content.conversation.to_string()),
                    priority: "high",
                    sound: "default",
                    data: data.clone(),
                })
            })
            .collect();
            if notifications.is_empty() {
                return None;
            }
            serde_json::to_vec(&GorushRequest { notifications })
        }
    };
    // Serializing plain structs of strings and numbers cannot fail.
    body.ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_cut_on_characters() {
        assert_eq!(preview("short"), "short");
        let long = "한".repeat(MAX_PREVIEW_CHARS + 5);
        let cut = preview(&long);
        assert_eq!(cut.chars().count(), MAX_PREVIEW_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
