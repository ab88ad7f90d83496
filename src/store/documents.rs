//! Documents, their chunks and their vectors.
//!
//! ```text
//! documents      doc_id → Document
//! docs_by_scope  scope ‖ 0 ‖ doc_id → ()
//! doc_by_hash    scope ‖ 0 ‖ blake3 → doc_id
//! chunks         doc_id ‖ chunk_no BE → ChunkRecord
//! vectors        doc_id ‖ chunk_no BE → 384 × f32 little-endian
//! ```
//!
//! A document and all its chunks and vectors are written in one transaction: a reader (and a
//! restart after `kill -9`) sees all of it or none of it. The embedding model id lives on the
//! document, so a vector set is never compared with vectors of another model.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::codec::{decode, encode, get, tx_get, unwrap_tx, vector_bytes, vector_from};
use super::library::NewDocument;
use super::types::{ChunkRecord, Document, DocumentId, Scope};
use super::{Store, StoreError, TxResult};

/// What [`Store::insert_document`] did.
pub struct Inserted {
    pub document: Document,
    /// False when the same bytes were already a document in this scope (that one is returned).
    pub created: bool,
}

/// One stored vector with its address, for building an index.
pub struct StoredVector {
    pub document: DocumentId,
    pub chunk: u32,
    pub vector: Vec<f32>,
}

pub(super) fn chunk_key(doc: DocumentId, n: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(20);
    key.extend_from_slice(doc.as_bytes());
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub(super) fn scoped(scope: &Scope, tail: &[u8]) -> Vec<u8> {
    let mut key = scope.key_prefix();
    key.extend_from_slice(tail);
    key
}

impl Store {
    /// Stores a document with its chunks and vectors atomically. When the scope already holds a
    /// document with the same content hash, nothing is written and that one is returned.
    pub fn insert_document(
        &self,
        document: &Document,
        chunks: &[ChunkRecord],
        vectors: &[Vec<f32>],
    ) -> Result<Inserted, StoreError> {
        if chunks.len() != vectors.len() {
            return Err(StoreError::Corrupt(
                "chunks and vectors differ in count".into(),
            ));
        }
        let library = document.scope == Scope::Library;
        self.library_tx(|t| {
            if let Some(doc) = t.doc_by_hash(&document.scope, &document.content_hash)? {
                if library {
                    Store::pin_upload(t, doc.id)?;
                }
                return Ok(Inserted {
                    document: doc,
                    created: false,
                });
            }
            t.insert_document(&NewDocument {
                document,
                chunks,
                vectors,
            })?;
            if library {
                Store::pin_upload(t, document.id)?;
            }
            Ok(Inserted {
                document: document.clone(),
                created: true,
            })
        })
    }

    pub fn document(&self, id: DocumentId) -> Result<Option<Document>, StoreError> {
        get(&self.inner.documents, id.as_bytes())
    }

    /// The document with these bytes in this scope, if any.
    pub fn document_by_hash(
        &self,
        scope: &Scope,
        hash: &str,
    ) -> Result<Option<Document>, StoreError> {
        match self.inner.doc_by_hash.get(scoped(scope, hash.as_bytes()))? {
            Some(id) => match DocumentId::from_slice(&id) {
                Some(id) => self.document(id),
                None => Err(StoreError::Corrupt("doc_by_hash".into())),
            },
            None => Ok(None),
        }
    }

    /// How many documents a scope holds, counting no further than `limit` (cheap for a big
    /// library: only the key index is walked, and only that far).
    pub fn count_documents_in(&self, scope: &Scope, limit: usize) -> Result<usize, StoreError> {
        let mut n = 0;
        for entry in self
            .inner
            .docs_by_scope
            .scan_prefix(scope.key_prefix())
            .take(limit)
        {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// A scope's documents, oldest first.
    pub fn documents_in(&self, scope: &Scope) -> Result<Vec<Document>, StoreError> {
        let prefix = scope.key_prefix();
        let mut out = Vec::new();
        for entry in self.inner.docs_by_scope.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let id = DocumentId::from_slice(&key[prefix.len()..])
                .ok_or_else(|| StoreError::Corrupt("docs_by_scope".into()))?;
            if let Some(doc) = self.document(id)? {
                out.push(doc);
            }
        }
        Ok(out)
    }

    pub fn chunk(&self, doc: DocumentId, n: u32) -> Result<Option<ChunkRecord>, StoreError> {
        get(&self.inner.chunks, &chunk_key(doc, n))
    }

    /// Every vector of a scope's documents made with `model_id` (others need re-embedding and are
    /// reported in the second list).
    pub fn scope_vectors(
        &self,
        scope: &Scope,
        model_id: &str,
    ) -> Result<(Vec<StoredVector>, Vec<DocumentId>), StoreError> {
        let mut vectors = Vec::new();
        let mut stale = Vec::new();
        for doc in self.documents_in(scope)? {
            // An orphaned library document waits for collection; it is not searchable.
            if *scope == Scope::Library
                && self.inner.library_orphans.contains_key(doc.id.as_bytes())?
            {
                continue;
            }
            if doc.model_id != model_id {
                stale.push(doc.id);
                continue;
            }
            for entry in self.inner.vectors.scan_prefix(doc.id.as_bytes()) {
                let (key, value) = entry?;
                let chunk = key
                    .get(16..20)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("vector key".into()))?;
                vectors.push(StoredVector {
                    document: doc.id,
                    chunk,
                    vector: vector_from(&value)?,
                });
            }
        }
        Ok((vectors, stale))
    }

    /// A document's vectors in chunk order.
    pub fn document_vectors(&self, doc: DocumentId) -> Result<Vec<Vec<f32>>, StoreError> {
        self.inner
            .vectors
            .scan_prefix(doc.as_bytes())
            .map(|entry| vector_from(&entry?.1))
            .collect()
    }

    /// Every document in every scope (for maintenance scans; documents are few compared to
    /// chunks).
    pub fn all_documents(&self) -> Result<Vec<Document>, StoreError> {
        self.inner
            .documents
            .iter()
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// The chunk texts of a document, in order.
    pub fn chunk_texts(&self, doc: DocumentId) -> Result<Vec<String>, StoreError> {
        self.inner
            .chunks
            .scan_prefix(doc.as_bytes())
            .map(|entry| decode::<ChunkRecord>(&entry?.1).map(|c| c.text))
            .collect()
    }

    /// Replaces a document's vectors and the model they were made with, atomically.
    pub fn replace_vectors(
        &self,
        doc: DocumentId,
        vectors: &[Vec<f32>],
        model_id: &str,
    ) -> Result<Document, StoreError> {
        let i = &*self.inner;
        let res =
            (&i.documents, &i.vectors).transaction(|(documents, vector_tree)| -> TxResult<_> {
                let mut document: Document = tx_get(documents, doc.as_bytes())?.ok_or(
                    ConflictableTransactionError::Abort(StoreError::NotFound("document")),
                )?;
                if vectors.len() != document.chunk_count as usize {
                    return Err(ConflictableTransactionError::Abort(StoreError::Corrupt(
                        "vector count differs from the chunk count".into(),
                    )));
                }
                for (n, vector) in vectors.iter().enumerate() {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    vector_tree.insert(chunk_key(doc, n), vector_bytes(vector))?;
                }
                document.model_id = model_id.to_string();
                documents.insert(&doc.as_bytes()[..], encode(&document))?;
                Ok(document)
            });
        unwrap_tx(res)
    }

    /// Deletes a document with its chunks and vectors, in one transaction. `None` when it did not
    /// exist; `InUse` for a library document that watched files refer to (it leaves the library
    /// when they leave the folder).
    pub fn delete_document(&self, id: DocumentId) -> Result<Option<Document>, StoreError> {
        let Some(doc) = self.document(id)? else {
            return Ok(None);
        };
        let files = self.document_files(id)?;
        if let Some(file) = files.first() {
            return Err(StoreError::InUse(format!(
                "the document comes from the watched file {}; remove the file from the folder",
                file.display()
            )));
        }
        self.library_tx(|t| t.remove_document(&doc))?;
        Ok(Some(doc))
    }

    /// Counts of document and chunk rows, by scanning (tests check the rows themselves).
    #[cfg(test)]
    pub(super) fn document_counts(&self) -> (usize, usize) {
        (self.inner.documents.len(), self.inner.chunks.len())
    }
}
