//! The user's own model files: name → path, size and sha256, pinned once when the user adds the
//! file (`hearth models add`). The daemon verifies a pinned file against these values before
//! every load, exactly like a manifest file; removing a pin never touches the file.

use serde::{Deserialize, Serialize};

use super::codec::{decode, encode, get};
use super::{Millis, Store, StoreError};

/// One pinned model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserModel {
    pub name: String,
    /// Absolute path, as the user gave it (resolved by the client).
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub added_at: Millis,
}

impl Store {
    /// Pins `model` under its name, replacing an earlier pin of that name. Not flushed: the
    /// caller waits for [`Store::durable`] before answering.
    pub fn put_user_model(&self, model: &UserModel) -> Result<(), StoreError> {
        self.inner
            .user_models
            .insert(model.name.as_bytes(), encode(model))?;
        Ok(())
    }

    pub fn user_model(&self, name: &str) -> Result<Option<UserModel>, StoreError> {
        get(&self.inner.user_models, name.as_bytes())
    }

    /// Every pin, by name.
    pub fn user_models(&self) -> Result<Vec<UserModel>, StoreError> {
        self.inner
            .user_models
            .iter()
            .map(|kv| kv.map_err(StoreError::from).and_then(|(_, v)| decode(&v)))
            .collect()
    }

    /// Unpins `name`; false when it was not pinned.
    pub fn remove_user_model(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner.user_models.remove(name.as_bytes())?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pins_survive_a_reopen_and_are_removed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let model = UserModel {
            name: "mine".into(),
            path: "/models/mine.gguf".into(),
            size: 42,
            sha256: "ab".repeat(32),
            added_at: 7,
        };
        {
            let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
            store.put_user_model(&model).unwrap();
            store.durable().await.unwrap();
        }
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        assert_eq!(store.user_model("mine").unwrap(), Some(model.clone()));
        assert_eq!(store.user_models().unwrap(), vec![model]);
        assert!(store.remove_user_model("mine").unwrap());
        assert!(!store.remove_user_model("mine").unwrap());
        assert!(store.user_models().unwrap().is_empty());
    }
}
