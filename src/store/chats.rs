//! Chats (indexed per user by last update, paged with opaque cursors), their messages (a question
//! and its reply appended in one transaction) and automatic titles.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::codec::{decode, encode, get, tx_get, unwrap_tx};
use super::counts::{self, Counted};
use super::types::{
    Chat, ChatId, DocumentId, Message, Scope, SearchMode, UserId, DEFAULT_CHAT_TITLE,
};
use super::{now_millis, Store, StoreError, TxResult};

/// A page of a user's chats, newest first.
pub struct ChatPage {
    pub chats: Vec<Chat>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next_before: Option<String>,
}

/// Counts of what [`Store::delete_chat`] removed.
pub struct DeletedChat {
    pub messages: u64,
    /// The chat's documents, removed with it (the caller drops them from the index).
    pub documents: Vec<DocumentId>,
}

impl Store {
    pub fn create_chat(&self, user_id: UserId, title: Option<&str>) -> Result<Chat, StoreError> {
        self.create_chat_with_id(ChatId::new(), user_id, title, SearchMode::default())
    }

    /// Creates the chat `id` (a client-chosen id, e.g. one the compat listener was sent), or
    /// returns it if it exists already (whoever it belongs to: the caller checks).
    pub fn create_chat_with_id(
        &self,
        id: ChatId,
        user_id: UserId,
        title: Option<&str>,
        search_mode: SearchMode,
    ) -> Result<Chat, StoreError> {
        let i = &*self.inner;
        let now = now_millis();
        let chat = Chat {
            id,
            user_id,
            title: title.unwrap_or(DEFAULT_CHAT_TITLE).to_string(),
            title_by_user: title.is_some(),
            created_at: now,
            updated_at: now,
            message_count: 0,
            next_seq: 0,
            search_mode,
        };
        let res = (&i.users, &i.chats, &i.chats_by_user, &i.counts).transaction(
            |(users, chats, by_user, counts)| -> TxResult<_> {
                if let Some(existing) = tx_get::<Chat>(chats, id.as_bytes())? {
                    return Ok(existing);
                }
                if users.get(user_id.as_bytes())?.is_none() {
                    return Err(ConflictableTransactionError::Abort(StoreError::NotFound(
                        "user",
                    )));
                }
                let previous = chats.insert(&chat.id.as_bytes()[..], encode(&chat))?;
                counts::add(counts, Counted::Chats, counts::added(&previous))?;
                by_user.insert(chat_index_key(&chat), &[][..])?;
                Ok(chat.clone())
            },
        );
        unwrap_tx(res)
    }

    /// Sets the search mode a chat's messages use when they name none.
    pub fn set_search_mode(&self, id: ChatId, mode: SearchMode) -> Result<Chat, StoreError> {
        self.update_chat(id, |chat| chat.search_mode = mode)
    }

    pub fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError> {
        get(&self.inner.chats, id.as_bytes())
    }

    /// A user's chats, most recently updated first. `before` is a cursor from a previous page.
    pub fn list_chats(
        &self,
        user_id: UserId,
        limit: usize,
        before: Option<&str>,
    ) -> Result<ChatPage, StoreError> {
        let i = &*self.inner;
        let prefix = user_id.as_bytes().to_vec();
        let upper = match before.map(decode_cursor) {
            Some(Some(cursor)) => [prefix.as_slice(), &cursor].concat(),
            Some(None) => return Err(StoreError::NotFound("cursor")),
            None => {
                let mut end = prefix.clone();
                end.extend_from_slice(&[0xff; 24]);
                end
            }
        };
        let mut chats = Vec::new();
        let mut more = false;
        for entry in i.chats_by_user.range(prefix.clone()..upper).rev() {
            let (key, _) = entry?;
            if chats.len() == limit {
                more = true;
                break;
            }
            let id = ChatId::from_slice(&key[24..])
                .ok_or_else(|| StoreError::Corrupt("chats_by_user: bad key".into()))?;
            if let Some(chat) = self.chat(id)? {
                chats.push(chat);
            }
        }
        let next_before = match (more, chats.last()) {
            (true, Some(last)) => Some(encode_cursor(&chat_index_key(last)[16..])),
            _ => None,
        };
        Ok(ChatPage { chats, next_before })
    }

    /// Sets a chat's title. `by_user` marks it as chosen by the user (never auto-replaced).
    pub fn rename_chat(&self, id: ChatId, title: &str, by_user: bool) -> Result<Chat, StoreError> {
        self.update_chat(id, |chat| {
            chat.title = title.to_string();
            chat.title_by_user |= by_user;
        })
    }

    /// Changes a chat with `edit` and bumps its `updated_at` (and its place in the user's list).
    fn update_chat(&self, id: ChatId, edit: impl Fn(&mut Chat)) -> Result<Chat, StoreError> {
        let i = &*self.inner;
        let res = (&i.chats, &i.chats_by_user).transaction(|(chats, by_idx)| -> TxResult<_> {
            let mut chat: Chat = tx_get(chats, id.as_bytes())?.ok_or(
                ConflictableTransactionError::Abort(StoreError::NotFound("chat")),
            )?;
            by_idx.remove(chat_index_key(&chat))?;
            edit(&mut chat);
            chat.updated_at = now_millis().max(chat.updated_at);
            chats.insert(&id.as_bytes()[..], encode(&chat))?;
            by_idx.insert(chat_index_key(&chat), &[][..])?;
            Ok(chat)
        });
        unwrap_tx(res)
    }

    /// Deletes a chat and all its messages.
    pub fn delete_chat(&self, id: ChatId) -> Result<DeletedChat, StoreError> {
        let i = &*self.inner;
        let chat = self.chat(id)?.ok_or(StoreError::NotFound("chat"))?;
        // The chat, its index entry and its messages go in one transaction (with the counts).
        let keys = i
            .messages
            .scan_prefix(id.as_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        let res = (&i.chats, &i.chats_by_user, &i.messages, &i.counts).transaction(
            |(chats, by_idx, messages, counts)| -> TxResult<_> {
                let mut removed = 0;
                for key in &keys {
                    removed -= counts::removed(&messages.remove(key)?);
                }
                counts::add(counts, Counted::Messages, -removed)?;
                let previous = chats.remove(&id.as_bytes()[..])?;
                counts::add(counts, Counted::Chats, counts::removed(&previous))?;
                by_idx.remove(chat_index_key(&chat))?;
                Ok(u64::try_from(removed).unwrap_or(0))
            },
        );
        let messages = unwrap_tx(res)?;
        let mut documents = Vec::new();
        for doc in self.documents_in(&Scope::Chat(id))? {
            self.delete_document(doc.id)?;
            documents.push(doc.id);
        }
        Ok(DeletedChat {
            messages,
            documents,
        })
    }

    // === messages ===

    /// All messages of a chat, oldest first.
    pub fn messages(&self, chat_id: ChatId) -> Result<Vec<Message>, StoreError> {
        self.inner
            .messages
            .scan_prefix(chat_id.as_bytes())
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// Appends messages to a chat atomically (a user message and its reply are written together,
    /// so history never holds a question without its answer). Sequence numbers are assigned here.
    pub fn append_messages(
        &self,
        chat_id: ChatId,
        new: &mut [Message],
    ) -> Result<Chat, StoreError> {
        let i = &*self.inner;
        let res = (&i.chats, &i.chats_by_user, &i.messages, &i.counts).transaction(
            |(chats, by_idx, messages, counts)| -> TxResult<_> {
                let mut chat: Chat = tx_get(chats, chat_id.as_bytes())?.ok_or(
                    ConflictableTransactionError::Abort(StoreError::NotFound("chat")),
                )?;
                by_idx.remove(chat_index_key(&chat))?;
                // The closure may be retried on conflict, so it numbers copies, not `new`.
                let mut numbered = new.to_vec();
                for message in &mut numbered {
                    message.seq = chat.next_seq;
                    message.chat_id = chat_id;
                    chat.next_seq += 1;
                    chat.message_count += 1;
                    let previous =
                        messages.insert(message_key(chat_id, message.seq), encode(&*message))?;
                    counts::add(counts, Counted::Messages, counts::added(&previous))?;
                }
                chat.updated_at = now_millis().max(chat.updated_at);
                chats.insert(&chat_id.as_bytes()[..], encode(&chat))?;
                by_idx.insert(chat_index_key(&chat), &[][..])?;
                Ok((chat, numbered))
            },
        );
        let (chat, numbered) = unwrap_tx(res)?;
        new.clone_from_slice(&numbered);
        Ok(chat)
    }

    /// Sets an automatic title unless the user titled the chat (or it has a non-default
    /// title). The check and the write are one transaction on the chat record, so a rename that
    /// commits first always wins and one that commits later simply overwrites. `None` when
    /// nothing was written.
    pub fn set_auto_title(&self, id: ChatId, title: &str) -> Result<Option<Chat>, StoreError> {
        let i = &*self.inner;
        let res = (&i.chats, &i.chats_by_user).transaction(|(chats, by_idx)| -> TxResult<_> {
            let Some(mut chat): Option<Chat> = tx_get(chats, id.as_bytes())? else {
                return Ok(None);
            };
            if chat.title_by_user || chat.title != DEFAULT_CHAT_TITLE {
                return Ok(None);
            }
            by_idx.remove(chat_index_key(&chat))?;
            chat.title = title.to_string();
            chats.insert(&id.as_bytes()[..], encode(&chat))?;
            by_idx.insert(chat_index_key(&chat), &[][..])?;
            Ok(Some(chat))
        });
        unwrap_tx(res)
    }
}

fn chat_index_key(chat: &Chat) -> Vec<u8> {
    let mut key = Vec::with_capacity(40);
    key.extend_from_slice(chat.user_id.as_bytes());
    key.extend_from_slice(&chat.updated_at.to_be_bytes());
    key.extend_from_slice(chat.id.as_bytes());
    key
}

fn message_key(chat_id: ChatId, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(chat_id.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A page cursor is the (updated_at ‖ chat_id) part of an index key, hex-encoded: opaque to
/// clients, stable across writes.
fn encode_cursor(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(text: &str) -> Option<Vec<u8>> {
    if text.len() != 48 || !text.is_ascii() {
        return None;
    }
    (0..24)
        .map(|n| u8::from_str_radix(&text[2 * n..2 * n + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{MessageId, Role};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn chats_page_newest_first_and_messages_keep_order() {
        let (_dir, store) = open();
        let user = store.create_user("u").unwrap().user;
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(
                store
                    .create_chat(user.id, Some(&format!("c{n}")))
                    .unwrap()
                    .id,
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // Touching the oldest chat moves it to the front.
        let mut msgs = vec![message(Role::User, "q"), message(Role::Assistant, "a")];
        store.append_messages(ids[0], &mut msgs).unwrap();
        let page = store.list_chats(user.id, 2, None).unwrap();
        let titles: Vec<_> = page.chats.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["c0", "c4"]);
        let next = store
            .list_chats(user.id, 10, page.next_before.as_deref())
            .unwrap();
        let titles: Vec<_> = next.chats.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["c3", "c2", "c1"]);
        assert!(next.next_before.is_none());

        let stored = store.messages(ids[0]).unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!((stored[0].seq, stored[1].seq), (0, 1));
        assert_eq!(stored[1].content, "a");
        let deleted = store.delete_chat(ids[0]).unwrap();
        assert_eq!(deleted.messages, 2);
        assert!(store.messages(ids[0]).unwrap().is_empty());
        assert_eq!(store.list_chats(user.id, 10, None).unwrap().chats.len(), 4);
    }

    #[test]
    fn bad_cursor_is_an_error() {
        let (_dir, store) = open();
        let user = store.create_user("u").unwrap().user;
        assert!(store.list_chats(user.id, 10, Some("zz")).is_err());
    }

    fn message(role: Role, content: &str) -> Message {
        Message {
            id: MessageId::new(),
            chat_id: ChatId::new(),
            seq: 0,
            role,
            content: content.into(),
            created_at: now_millis(),
            finish_reason: None,
            usage: None,
            sources: Vec::new(),
        }
    }

    #[test]
    fn auto_title_never_replaces_a_user_title() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let user = store.create_user("u").unwrap().user.id;
        let chat = store.create_chat(user, None).unwrap();
        store.rename_chat(chat.id, "Mine", true).unwrap();
        assert!(store.set_auto_title(chat.id, "Auto").unwrap().is_none());
        assert_eq!(store.chat(chat.id).unwrap().unwrap().title, "Mine");
        let other = store.create_chat(user, None).unwrap();
        assert_eq!(
            store
                .set_auto_title(other.id, "Auto")
                .unwrap()
                .unwrap()
                .title,
            "Auto"
        );
    }
}
