//! Users (unique by name) and their generation settings.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::codec::{corrupt, decode, encode, get, unwrap_tx};
use super::counts::{self, Counted};
use super::types::{Settings, User, UserId};
use super::{now_millis, Store, StoreError, TxResult};

/// What [`Store::create_user`] did.
pub struct CreatedUser {
    pub user: User,
    /// False when the name already existed and its user was returned.
    pub created: bool,
}

impl Store {
    /// Creates a user, or returns the existing user of that name.
    pub fn create_user(&self, username: &str) -> Result<CreatedUser, StoreError> {
        let i = &*self.inner;
        let candidate = User {
            id: UserId::new(),
            username: username.to_string(),
            created_at: now_millis(),
        };
        let res = (&i.users, &i.users_by_name, &i.counts).transaction(
            |(users, by_name, counts)| -> TxResult<_> {
                if let Some(existing) = by_name.get(username.as_bytes())? {
                    let id =
                        UserId::from_slice(&existing).ok_or_else(|| corrupt("users_by_name"))?;
                    let user = users.get(id.as_bytes())?.ok_or_else(|| corrupt("users"))?;
                    return Ok(CreatedUser {
                        user: decode(&user).map_err(ConflictableTransactionError::Abort)?,
                        created: false,
                    });
                }
                let previous = users.insert(&candidate.id.as_bytes()[..], encode(&candidate))?;
                counts::add(counts, Counted::Users, counts::added(&previous))?;
                by_name.insert(username.as_bytes(), &candidate.id.as_bytes()[..])?;
                Ok(CreatedUser {
                    user: candidate.clone(),
                    created: true,
                })
            },
        );
        unwrap_tx(res)
    }

    pub fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        get(&self.inner.users, id.as_bytes())
    }

    /// The user's settings, defaults if never written.
    pub fn settings(&self, id: UserId) -> Result<Settings, StoreError> {
        Ok(get(&self.inner.settings, id.as_bytes())?.unwrap_or_default())
    }

    pub fn put_settings(&self, id: UserId, settings: &Settings) -> Result<(), StoreError> {
        self.inner
            .settings
            .insert(id.as_bytes(), encode(settings))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn users_are_unique_by_name() {
        let (_dir, store) = open();
        let a = store.create_user("ada").unwrap();
        let b = store.create_user("ada").unwrap();
        assert!(a.created && !b.created);
        assert_eq!(a.user, b.user);
        store.durable().await.unwrap();
    }
}
