//! A user's devices: those that acknowledged deliveries and those
//! registered for push notifications. Each user reads and changes their
//! own only: every call is keyed by the authenticated user.

use std::collections::BTreeMap;

use hanmadi_storage::chat::{Cursor, PushDevice, PushPlatform, MAX_DEVICE_ID};
use hanmadi_storage::kv::Kv;

use crate::{Router, RouterError};

/// One of a user's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// The id the device gives in `Hello`.
    pub device_id: String,
    /// Its push registration.
    pub push: Option<PushDevice>,
    /// The last inbox cursor it acknowledged.
    pub delivered: Option<Cursor>,
}

fn check_device_id(device_id: &str) -> Result<(), RouterError> {
    if device_id.is_empty() || device_id.len() > MAX_DEVICE_ID {
        return Err(RouterError::InvalidArgument(
            "device_id must be 1 to 64 bytes",
        ));
    }
    Ok(())
}

impl<K: Kv> Router<K> {
    /// `user`'s devices, by device id: each that acknowledged deliveries,
    /// registered for push, or both.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt record.
    pub async fn devices(&self, user: u64) -> Result<Vec<DeviceState>, RouterError> {
        let mut devices: BTreeMap<String, DeviceState> = BTreeMap::new();
        for (device_id, cursor) in self.store.delivered_devices(user).await? {
            devices.insert(
                device_id.clone(),
                DeviceState {
                    device_id,
                    push: None,
                    delivered: Some(cursor),
                },
            );
        }
        for push in self.store.push_devices(user).await? {
            let device_id = push.device_id.clone();
            devices
                .entry(device_id.clone())
                .or_insert(DeviceState {
                    device_id,
                    push: None,
                    delivered: None,
                })
                .push = Some(push);
        }
        Ok(devices.into_values().collect())
    }

    /// Registers (or replaces) the push token of `user`'s device
    /// `device_id`: pushes for `user` name it from now on.
    ///
    /// # Errors
    ///
    /// [`RouterError::InvalidArgument`] for a device id or token out of
    /// bounds, or past the devices a user may register; a storage failure.
    pub async fn register_push(
        &self,
        user: u64,
        device_id: &str,
        platform: PushPlatform,
        token: &str,
    ) -> Result<(), RouterError> {
        check_device_id(device_id)?;
        Ok(self
            .store
            .put_push_device(user, device_id, platform, token, self.now_ms())
            .await?)
    }

    /// Removes the push registration of `user`'s device `device_id`, if it
    /// had one.
    ///
    /// # Errors
    ///
    /// [`RouterError::InvalidArgument`] for a malformed device id; a
    /// storage failure.
    pub async fn unregister_push(&self, user: u64, device_id: &str) -> Result<(), RouterError> {
        check_device_id(device_id)?;
        self.store.delete_push_device(user, device_id).await?;
        Ok(())
    }
}
