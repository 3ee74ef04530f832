//! Jobs of a lone replica, in an embedded SQLite database (`jobs_db`). Every state change is a
//! committed transaction (WAL, synchronous=FULL), so a SIGKILL or a restart loses no queued job:
//! on start, work not acknowledged is claimable again, and a job left `running` by the previous
//! process is resumed (counted as a reclaim).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    now, Claim, Job, JobError, JobRequest, Outcome, Retention, Status, StoreError, WebhookState,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    request TEXT NOT NULL,
    audio BLOB,
    result BLOB,
    error TEXT,
    webhook TEXT,
    expires_at REAL NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (acked, created_at);
";

struct Inner {
    db: Mutex<Connection>,
    /// Claims this process holds (a claim is only in memory: a restart frees them all).
    claimed: Mutex<HashSet<String>>,
    retention: Retention,
    worker: String,
}

#[derive(Clone)]
pub struct SqliteStore(Arc<Inner>);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    pub fn open(path: &Path, retention: Retention, worker: String) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Connection::open(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        db.execute_batch(SCHEMA).map_err(unavailable)?;
        let open: i64 = db
            .query_row("SELECT count(*) FROM jobs WHERE acked = 0", [], |r| {
                r.get(0)
            })
            .map_err(unavailable)?;
        if open > 0 {
            tracing::info!(jobs = open, path = %path.display(), "job store opened: resuming unfinished jobs");
        }
        Ok(Self(Arc::new(Inner {
            db: Mutex::new(db),
            claimed: Mutex::new(HashSet::new()),
            retention,
            worker,
        })))
    }

    /// Run `f` with the database on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, &Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let db = inner.db.lock().unwrap_or_else(|p| p.into_inner());
            f(&inner, &db)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }

    pub async fn create(&self, job: &Job, audio: Option<Vec<u8>>) -> Result<(), StoreError> {
        let job = job.clone();
        let request = serde_json::to_string(&job.request).map_err(unavailable)?;
        let webhook = job
            .webhook
            .as_ref()
            .and_then(|w| serde_json::to_string(w).ok());
        let full = self
            .with(move |inner, db| {
                let open: i64 =
                    db.query_row("SELECT count(*) FROM jobs WHERE acked = 0", [], |r| r.get(0))?;
                if open as u64 >= inner.retention.max_queued_jobs {
                    return Ok(Some(open as u64));
                }
                db.execute(
                    "INSERT INTO jobs (id, owner, status, created_at, request, audio, webhook, expires_at)
                     VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7)",
                    params![
                        job.id,
                        job.owner,
                        job.created_at,
                        request,
                        audio,
                        webhook,
                        job.created_at + inner.retention.max_queued_s as f64
                    ],
                )?;
                Ok(None)
            })
            .await?;
        match full {
            Some(n) => Err(StoreError::Full(n)),
            None => Ok(()),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_string();
        self.with(move |_, db| {
            db.query_row(
                "SELECT id, owner, status, created_at, started_at, finished_at, attempts, worker,
                        request, result, error, webhook FROM jobs WHERE id = ?1",
                [id],
                |r| {
                    let request: String = r.get(8)?;
                    let error: Option<String> = r.get(10)?;
                    let webhook: Option<String> = r.get(11)?;
                    let status: String = r.get(2)?;
                    Ok(Job {
                        id: r.get(0)?,
                        owner: r.get(1)?,
                        status: Status::parse(&status).unwrap_or(Status::Failed),
                        created_at: r.get(3)?,
                        started_at: r.get(4)?,
                        finished_at: r.get(5)?,
                        attempts: r.get::<_, i64>(6)? as u32,
                        worker: r.get(7)?,
                        request: serde_json::from_str::<JobRequest>(&request).unwrap_or_default(),
                        result: r.get(9)?,
                        error: error.and_then(|e| serde_json::from_str::<JobError>(&e).ok()),
                        webhook: webhook
                            .and_then(|w| serde_json::from_str::<WebhookState>(&w).ok()),
                    })
                },
            )
            .optional()
        })
        .await
    }

    pub async fn audio(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_string();
        self.with(move |_, db| {
            db.query_row("SELECT audio FROM jobs WHERE id = ?1", [id], |r| {
                r.get::<_, Option<Vec<u8>>>(0)
            })
            .optional()
            .map(Option::flatten)
        })
        .await
    }

    pub async fn cancel(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with(move |inner, db| {
            let t = now();
            db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?2, audio = NULL, expires_at = ?3
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id, t, t + inner.retention.job_ttl_s as f64],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn next(&self) -> Result<Option<Claim>, StoreError> {
        self.with(move |inner, db| {
            let mut claimed = inner.claimed.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = db.prepare_cached(
                "SELECT id, status FROM jobs WHERE acked = 0 ORDER BY created_at LIMIT ?1",
            )?;
            let rows = stmt.query_map([claimed.len() as i64 + 1], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (id, status) = row?;
                if claimed.insert(id.clone()) {
                    return Ok(Some(Claim {
                        id,
                        entry: String::new(),
                        // Left running by a process that stopped (this store has one replica).
                        reclaimed: status == "running",
                    }));
                }
            }
            Ok(None)
        })
        .await
    }

    pub async fn start(&self, claim: &Claim) -> Result<Option<Job>, StoreError> {
        let id = claim.id.clone();
        self.with(move |inner, db| {
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?2, attempts = attempts + 1, worker = ?3
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id, now(), inner.worker],
            )
            .map(|_| ())
        })
        .await?;
        self.get(&claim.id).await
    }

    pub async fn finish(&self, claim: &Claim, outcome: &Outcome) -> Result<(), StoreError> {
        let id = claim.id.clone();
        let (status, result, error) = match outcome {
            Outcome::Succeeded(r) => ("succeeded", Some(r.clone()), None),
            Outcome::Failed(e) => ("failed", None, serde_json::to_string(e).ok()),
        };
        self.with(move |inner, db| {
            let t = now();
            db.execute(
                "UPDATE jobs SET status = ?2, result = ?3, error = ?4, finished_at = ?5, audio = NULL,
                        expires_at = ?6
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id, status, result, error, t, t + inner.retention.job_ttl_s as f64],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn set_webhook(&self, id: &str, w: &WebhookState) -> Result<(), StoreError> {
        let id = id.to_string();
        let w = serde_json::to_string(w).map_err(unavailable)?;
        self.with(move |_, db| {
            db.execute("UPDATE jobs SET webhook = ?2 WHERE id = ?1", params![id, w])
                .map(|_| ())
        })
        .await
    }

    pub fn release(&self, claim: &Claim) {
        self.0
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&claim.id);
    }

    pub async fn ack(&self, claim: &Claim) -> Result<(), StoreError> {
        let id = claim.id.clone();
        let r = self
            .with(move |_, db| {
                db.execute(
                    "UPDATE jobs SET acked = 1, audio = NULL WHERE id = ?1",
                    [id],
                )
                .map(|_| ())
            })
            .await;
        self.0
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&claim.id);
        r
    }

    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.with(|_, db| {
            db.query_row(
                "SELECT coalesce(sum(status = 'queued'), 0), coalesce(sum(status = 'running'), 0)
                 FROM jobs WHERE acked = 0",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }

    pub async fn expire(&self) -> Result<u64, StoreError> {
        self.with(|_, db| {
            db.execute(
                "DELETE FROM jobs WHERE expires_at < ?1 AND (acked = 1 OR status = 'queued')",
                [now()],
            )
            .map(|n| n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention() -> Retention {
        Retention {
            job_ttl_s: 60,
            max_queued_s: 3600,
            max_queued_jobs: 2,
            visibility_timeout_s: 30,
        }
    }

    #[tokio::test]
    async fn a_job_survives_reopening_and_is_resumed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let s = SqliteStore::open(&path, retention(), "a".into()).unwrap();
        let job = Job::new("key:x".into(), JobRequest::default());
        s.create(&job, Some(b"RIFF".to_vec())).await.unwrap();
        s.create(&Job::new(String::new(), JobRequest::default()), None)
            .await
            .unwrap();
        assert!(matches!(
            s.create(&Job::new(String::new(), JobRequest::default()), None)
                .await,
            Err(StoreError::Full(2))
        ));
        let c = s.next().await.unwrap().unwrap();
        assert_eq!(c.id, job.id);
        assert!(!c.reclaimed);
        let started = s.start(&c).await.unwrap().unwrap();
        assert_eq!((started.status, started.attempts), (Status::Running, 1));
        drop(s); // the process dies mid-run

        let s = SqliteStore::open(&path, retention(), "b".into()).unwrap();
        let c = s.next().await.unwrap().unwrap();
        assert_eq!(c.id, job.id);
        assert!(c.reclaimed);
        assert_eq!(s.audio(&c.id).await.unwrap().as_deref(), Some(&b"RIFF"[..]));
        s.start(&c).await.unwrap();
        s.finish(&c, &Outcome::Succeeded(b"t".to_vec()))
            .await
            .unwrap();
        // A late cancel does not undo a result.
        s.cancel(&c.id).await.unwrap();
        s.ack(&c).await.unwrap();
        let done = s.get(&job.id).await.unwrap().unwrap();
        assert_eq!((done.status, done.attempts), (Status::Succeeded, 2));
        assert_eq!(done.result.as_deref(), Some(&b"t"[..]));
        assert_eq!(s.audio(&job.id).await.unwrap(), None);
        assert_eq!(s.counts().await.unwrap(), (1, 0));
        // The other job is next; nothing is handed out twice.
        let c2 = s.next().await.unwrap().unwrap();
        assert_ne!(c2.id, job.id);
        assert!(s.next().await.unwrap().is_none());
    }
}
