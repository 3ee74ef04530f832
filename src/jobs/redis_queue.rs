//! Jobs shared by replicas through Redis.
//!
//! - `whisperd:jobs`: a Stream with the consumer group `workers`; an entry per job to run.
//!   A replica reads new entries with XREADGROUP, keeps the ones it holds alive with XCLAIM
//!   (which resets their idle time) every third of `job_visibility_timeout_s`, and first takes,
//!   with XAUTOCLAIM, any entry idle for longer than that: its replica stopped. XACK + XDEL when
//!   nothing more is to be done.
//! - `whisperd:job:<id>`: a hash with the job (status, times, request, result, error, webhook);
//!   state changes are Lua scripts that check the status first (a cancelled or finished job is
//!   never set back to running, a second result never replaces the first). Finished jobs expire
//!   after `job_ttl_s`.
//! - `whisperd:job:<id>:audio`: the upload, until the job finishes.
//!
//! Keys of unfinished jobs (and their audio) carry no expiry, so a Redis run with
//! `maxmemory-policy volatile-lru` (the chart's) evicts cached transcripts, never queued work;
//! finished jobs get their `job_ttl_s`. When Redis is full anyway, the finish script frees the
//! audio before it writes anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::Value;

use super::{
    now, Claim, Job, JobError, JobRequest, Outcome, Retention, Status, StoreError, WebhookState,
};
use crate::cluster::RedisLink;

const STREAM: &str = "whisperd:jobs";
const GROUP: &str = "workers";

/// Renew this consumer's claim on an entry, only while it still holds it (another replica may
/// have taken it over after a long pause): 1 when renewed. KEYS: stream. ARGV: group, entry, me.
const HEARTBEAT_LUA: &str = "
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 1 and p[1][2] == ARGV[3] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
  return 1
end
return 0";

const START_LUA: &str = "
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'queued' or s == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
return redis.call('HGETALL', KEYS[1])";

/// KEYS: job, audio. ARGV: status, finished_at, ttl, field, value.
const FINISH_LUA: &str = "
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'queued' or s == 'running' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ARGV[5]) end
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0";

fn job_key(id: &str) -> String {
    format!("whisperd:job:{id}")
}

fn audio_key(id: &str) -> String {
    format!("whisperd:job:{id}:audio")
}

fn down() -> StoreError {
    StoreError::Unavailable("redis is unavailable".into())
}

pub struct RedisStore {
    link: Arc<RedisLink>,
    retention: Retention,
    group_ready: AtomicBool,
    /// Where the next XAUTOCLAIM scan resumes (it looks at a few pending entries per call).
    reclaim_cursor: std::sync::Mutex<String>,
}

impl RedisStore {
    pub fn new(link: Arc<RedisLink>, retention: Retention) -> Self {
        Self {
            link,
            retention,
            group_ready: AtomicBool::new(false),
            reclaim_cursor: std::sync::Mutex::new("0-0".into()),
        }
    }

    async fn ensure_group(&self) -> Result<(), StoreError> {
        if self.group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        // BUSYGROUP (the group exists) comes back as an error answer: check for the group after.
        let _: Option<Value> = self
            .link
            .query(
                "jobs_group",
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(STREAM)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        let groups: Option<Value> = self
            .link
            .query("jobs_group", redis::cmd("XINFO").arg("GROUPS").arg(STREAM))
            .await;
        match groups {
            Some(Value::Array(g)) if !g.is_empty() => {
                self.group_ready.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(down()),
        }
    }

    pub async fn create(&self, job: &Job, audio: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.ensure_group().await?;
        let waiting: u64 = self
            .link
            .query("jobs_len", redis::cmd("XLEN").arg(STREAM))
            .await
            .ok_or_else(down)?;
        if waiting >= self.retention.max_queued_jobs {
            return Err(StoreError::Full(waiting));
        }
        let request = serde_json::to_string(&job.request).unwrap_or_default();
        let bytes = audio.as_ref().map_or(0, Vec::len);
        let mut p = redis::pipe();
        p.atomic();
        let key = job_key(&job.id);
        p.cmd("HSET")
            .arg(&key)
            .arg("owner")
            .arg(&job.owner)
            .arg("status")
            .arg("queued")
            .arg("created_at")
            .arg(job.created_at)
            .arg("attempts")
            .arg(0)
            .arg("request")
            .arg(request)
            .ignore();
        if let Some(w) = &job.webhook {
            p.cmd("HSET")
                .arg(&key)
                .arg("webhook")
                .arg(serde_json::to_string(w).unwrap_or_default())
                .ignore();
        }
        if let Some(audio) = audio {
            p.cmd("SET").arg(audio_key(&job.id)).arg(audio).ignore();
        }
        p.cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("id")
            .arg(&job.id)
            .ignore();
        let done: Option<()> = self.link.pipe("jobs_create", &p, bytes).await;
        done.ok_or_else(down)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let h: HashMap<String, Vec<u8>> = self
            .link
            .query("jobs_get", redis::cmd("HGETALL").arg(job_key(id)))
            .await
            .ok_or_else(down)?;
        Ok(from_hash(id, &h))
    }

    pub async fn audio(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // Up to max_upload_mb: give it time (10 MB/s for 25 MB is 2.5 s).
        let limit = self.link.timeout() + std::time::Duration::from_secs(10);
        self.link
            .query_within("jobs_audio", redis::cmd("GET").arg(audio_key(id)), limit)
            .await
            .ok_or_else(down)
    }

    pub async fn cancel(&self, id: &str) -> Result<(), StoreError> {
        let (t, ttl) = (
            now().to_string(),
            self.retention.job_ttl_s.max(1).to_string(),
        );
        let _: i64 = self
            .link
            .eval(
                "jobs_cancel",
                FINISH_LUA,
                &[&job_key(id), &audio_key(id)],
                &[b"cancelled", t.as_bytes(), ttl.as_bytes(), b"", b""],
            )
            .await
            .ok_or_else(down)?;
        Ok(())
    }

    pub async fn next(&self) -> Result<Option<Claim>, StoreError> {
        self.ensure_group().await?;
        let me = self.link.replica.clone();
        let idle_ms = self.retention.visibility_timeout_s.max(1) * 1000;
        let cursor = self
            .reclaim_cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stale: Option<Value> = self
            .link
            .query(
                "jobs_reclaim",
                redis::cmd("XAUTOCLAIM")
                    .arg(STREAM)
                    .arg(GROUP)
                    .arg(&me)
                    .arg(idle_ms)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(1),
            )
            .await;
        let Some(stale) = stale else {
            // NOGROUP after Redis lost its data, or an outage: make the group again next time.
            self.group_ready.store(false, Ordering::Relaxed);
            return Err(down());
        };
        if let Value::Array(parts) = &stale {
            if let Some(Ok(next)) = parts.first().map(redis::from_redis_value_ref::<String>) {
                *self
                    .reclaim_cursor
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = next;
            }
        }
        if let Some((entry, id)) = first_entry(&stale) {
            return Ok(Some(Claim {
                id,
                entry,
                reclaimed: true,
            }));
        }
        if let Value::Array(parts) = &stale {
            // Entries deleted while pending: nothing to run, take them off the list.
            if let Some(Value::Array(deleted)) = parts.get(2) {
                for d in deleted {
                    if let Ok(entry) = redis::from_redis_value_ref::<String>(d) {
                        let _: Option<i64> = self
                            .link
                            .query(
                                "jobs_ack",
                                redis::cmd("XACK").arg(STREAM).arg(GROUP).arg(entry),
                            )
                            .await;
                    }
                }
            }
        }
        let fresh: Option<Value> = self
            .link
            .query(
                "jobs_read",
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&me)
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(STREAM)
                    .arg(">"),
            )
            .await;
        let Some(fresh) = fresh else {
            self.group_ready.store(false, Ordering::Relaxed);
            return Err(down());
        };
        Ok(first_entry(&fresh).map(|(entry, id)| Claim {
            id,
            entry,
            reclaimed: false,
        }))
    }

    pub async fn start(&self, claim: &Claim) -> Result<Option<Job>, StoreError> {
        let t = now().to_string();
        let h: HashMap<String, Vec<u8>> = self
            .link
            .eval(
                "jobs_start",
                START_LUA,
                &[&job_key(&claim.id)],
                &[self.link.replica.as_bytes(), t.as_bytes()],
            )
            .await
            .ok_or_else(down)?;
        Ok(from_hash(&claim.id, &h))
    }

    /// `Some(false)` when another replica has taken the job over.
    pub async fn heartbeat(&self, claim: &Claim) -> Option<bool> {
        let kept: Option<i64> = self
            .link
            .eval(
                "jobs_heartbeat",
                HEARTBEAT_LUA,
                &[STREAM],
                &[
                    GROUP.as_bytes(),
                    claim.entry.as_bytes(),
                    self.link.replica.as_bytes(),
                ],
            )
            .await;
        kept.map(|k| k == 1)
    }

    pub async fn finish(&self, claim: &Claim, outcome: &Outcome) -> Result<(), StoreError> {
        let (t, ttl) = (
            now().to_string(),
            self.retention.job_ttl_s.max(1).to_string(),
        );
        let (status, field, value): (&[u8], &[u8], Vec<u8>) = match outcome {
            Outcome::Succeeded(r) => (b"succeeded", b"result", r.clone()),
            Outcome::Failed(e) => (
                b"failed",
                b"error",
                serde_json::to_vec(e).unwrap_or_default(),
            ),
        };
        let _: i64 = self
            .link
            .eval(
                "jobs_finish",
                FINISH_LUA,
                &[&job_key(&claim.id), &audio_key(&claim.id)],
                &[status, t.as_bytes(), ttl.as_bytes(), field, &value],
            )
            .await
            .ok_or_else(down)?;
        Ok(())
    }

    pub async fn set_webhook(&self, id: &str, w: &WebhookState) -> Result<(), StoreError> {
        let _: i64 = self
            .link
            .query(
                "jobs_webhook",
                redis::cmd("HSET")
                    .arg(job_key(id))
                    .arg("webhook")
                    .arg(serde_json::to_string(w).unwrap_or_default()),
            )
            .await
            .ok_or_else(down)?;
        Ok(())
    }

    pub async fn ack(&self, claim: &Claim) -> Result<(), StoreError> {
        let mut p = redis::pipe();
        p.cmd("XACK")
            .arg(STREAM)
            .arg(GROUP)
            .arg(&claim.entry)
            .ignore();
        p.cmd("XDEL").arg(STREAM).arg(&claim.entry).ignore();
        let done: Option<()> = self.link.pipe("jobs_ack", &p, 0).await;
        done.ok_or_else(down)
    }

    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.ensure_group().await?;
        let len: u64 = self
            .link
            .query("jobs_len", redis::cmd("XLEN").arg(STREAM))
            .await
            .ok_or_else(down)?;
        let pending: Value = self
            .link
            .query(
                "jobs_pending",
                redis::cmd("XPENDING").arg(STREAM).arg(GROUP),
            )
            .await
            .ok_or_else(down)?;
        let running = match &pending {
            Value::Array(v) => v
                .first()
                .and_then(|c| redis::from_redis_value_ref::<u64>(c).ok()),
            _ => None,
        }
        .unwrap_or(0);
        Ok((len.saturating_sub(running), running))
    }
}

/// The first `(entry id, job id)` in an XREADGROUP or XAUTOCLAIM answer.
fn first_entry(v: &Value) -> Option<(String, String)> {
    let Value::Array(items) = v else {
        return None;
    };
    if let [entry, Value::Array(fields)] = items.as_slice() {
        if let Ok(entry) = redis::from_redis_value_ref::<String>(entry) {
            let pairs: Vec<String> = fields
                .iter()
                .filter_map(|f| redis::from_redis_value_ref::<String>(f).ok())
                .collect();
            if pairs.len() == fields.len() {
                if let Some(i) = pairs
                    .chunks(2)
                    .position(|kv| kv[0] == "id" && kv.len() == 2)
                {
                    return Some((entry, pairs[2 * i + 1].clone()));
                }
            }
        }
    }
    items.iter().find_map(first_entry)
}

fn from_hash(id: &str, h: &HashMap<String, Vec<u8>>) -> Option<Job> {
    let text = |k: &str| h.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let num = |k: &str| text(k).and_then(|v| v.parse::<f64>().ok());
    let status = Status::parse(&text("status")?)?;
    Some(Job {
        id: id.to_string(),
        owner: text("owner").unwrap_or_default(),
        status,
        created_at: num("created_at").unwrap_or(0.0),
        started_at: num("started_at"),
        finished_at: num("finished_at"),
        attempts: num("attempts").unwrap_or(0.0) as u32,
        worker: text("worker"),
        request: text("request")
            .and_then(|r| serde_json::from_str::<JobRequest>(&r).ok())
            .unwrap_or_default(),
        result: h.get("result").cloned(),
        error: text("error").and_then(|e| serde_json::from_str::<JobError>(&e).ok()),
        webhook: text("webhook").and_then(|w| serde_json::from_str::<WebhookState>(&w).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_are_found_in_both_answer_shapes() {
        let entry = Value::Array(vec![
            bulk("1700000000000-0"),
            Value::Array(vec![bulk("id"), bulk("job_abc")]),
        ]);
        // XREADGROUP: [[stream, [entry]]]
        let read = Value::Array(vec![Value::Array(vec![
            bulk(STREAM),
            Value::Array(vec![entry.clone()]),
        ])]);
        assert_eq!(
            first_entry(&read),
            Some(("1700000000000-0".into(), "job_abc".into()))
        );
        // XAUTOCLAIM: [cursor, [entry], [deleted]]
        let claim = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![entry]),
            Value::Array(vec![]),
        ]);
        assert_eq!(first_entry(&claim).map(|e| e.1), Some("job_abc".into()));
        let empty = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        assert_eq!(first_entry(&empty), None);
        assert_eq!(first_entry(&Value::Nil), None);
    }
}
