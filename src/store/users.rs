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

    /// Creates the user `id` named `username` (an id a client chose), or returns the user `id`
    /// if it exists. A name taken by another user is `InUse`.
    pub fn create_user_with_id(
        &self,
        id: UserId,
        username: &str,
    ) -> Result<CreatedUser, StoreError> {
        let i = &*self.inner;
        let candidate = User {
            id,
            username: username.to_string(),
            created_at: now_millis(),
        };
        let res = (&i.users, &i.users_by_name, &i.counts).transaction(
            |(users, by_name, counts)| -> TxResult<_> {
                if let Some(user) = users.get(id.as_bytes())? {
                    return Ok(CreatedUser {
                        user: decode(&user).map_err(ConflictableTransactionError::Abort)?,
                        created: false,
                    });
                }
                if by_name.get(username.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::InUse(
                        format!("the name '{username}' belongs to another user"),
                    )));
                }
                let previous = users.insert(&id.as_bytes()[..], encode(&candidate))?;
                counts::add(counts, Counted::Users, counts::added(&previous))?;
                by_name.insert(username.as_bytes(), &id.as_bytes()[..])?;
                Ok(CreatedUser {
                    user: candidate.clone(),
                    created: true,
                })
            },
        );
        unwrap_tx(res)
    }

    /// The user named `username`, if any.
    pub fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        match self.inner.users_by_name.get(username.as_bytes())? {
            Some(id) => {
                let id = UserId::from_slice(&id)
                    .ok_or_else(|| StoreError::Corrupt("users_by_name: bad id".into()))?;
                self.user(id)
            }
            None => Ok(None),
        }
    }

    /// Every user, oldest first.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.inner
            .users
            .iter()
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// Deletes a user with their settings, memories and memory history. Their chats must be
    /// deleted first (`InUse` otherwise): chat deletion also drops index scopes, which the
    /// store does not own.
    pub fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        let i = &*self.inner;
        if i.chats_by_user.scan_prefix(id.as_bytes()).next().is_some() {
            return Err(StoreError::InUse("the user still has chats".into()));
        }
        let Some(user) = self.user(id)? else {
            return Ok(false);
        };
        self.purge_memories(id)?;
        let res = (&i.users, &i.users_by_name, &i.settings, &i.counts).transaction(
            |(users, by_name, settings, counts)| -> TxResult<_> {
                let previous = users.remove(&id.as_bytes()[..])?;
                counts::add(counts, Counted::Users, counts::removed(&previous))?;
                by_name.remove(user.username.as_bytes())?;
                settings.remove(&id.as_bytes()[..])?;
                Ok(())
            },
        );
        unwrap_tx(res)?;
        Ok(true)
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
    async fn a_user_is_deleted_only_without_chats_and_a_client_id_is_kept() {
        let (_dir, store) = open();
        let id = UserId::new();
        let made = store.create_user_with_id(id, "lin").unwrap();
        assert!(made.created);
        assert_eq!(made.user.id, id);
        // The same id again is the same user; the name under another id is taken.
        assert!(!store.create_user_with_id(id, "lin").unwrap().created);
        assert!(matches!(
            store.create_user_with_id(UserId::new(), "lin"),
            Err(StoreError::InUse(_))
        ));
        assert_eq!(store.user_by_name("lin").unwrap().unwrap().id, id);
        let chat = store.create_chat(id, None).unwrap();
        assert!(matches!(store.delete_user(id), Err(StoreError::InUse(_))));
        store.delete_chat(chat.id).unwrap();
        assert!(store.delete_user(id).unwrap());
        assert!(store.user(id).unwrap().is_none());
        assert!(store.user_by_name("lin").unwrap().is_none());
        assert!(!store.delete_user(id).unwrap());
        assert_eq!(store.counts().unwrap().users, 0);
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
