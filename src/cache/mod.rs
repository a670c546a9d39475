//! Coordination between runs and replicas: per-dataset run locks, run
//! events, and a small result cache. Redis when `REDIS_URL` is set (shared by
//! every replica), otherwise an in-process fallback with the same semantics
//! within one process. Knows nothing about pipelines; callers name the keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The stream (after the key prefix) where run events are appended.
pub const RUN_EVENTS_STREAM: &str = "workbench:runs";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis unreachable at {url}: {source}; runs need it for locking (queries on the lake still work)")]
    Unavailable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot take a run lock in {path}: {source}; check that the lake directory is writable")]
    LockFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An event about a run, as published on the stream / channel.
#[derive(Debug, Clone)]
pub struct Event {
    /// run_started | step | run_finished | run_failed
    pub kind: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Clone)]
pub enum Coordinator {
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
    Local(Arc<Local>),
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Coordinator::Redis { prefix, .. } => write!(f, "Coordinator::Redis(prefix={prefix:?})"),
            Coordinator::Local(_) => f.write_str("Coordinator::Local"),
        }
    }
}

#[derive(Debug)]
pub struct Local {
    locks: Mutex<HashMap<String, (String, Instant)>>,
    /// Where locks are also taken as operating-system file locks, so that
    /// processes sharing a local lake without Redis exclude each other too
    /// (`workbench run` next to `workbench serve`). A process that dies
    /// loses its file locks at once.
    lock_dir: Option<std::path::PathBuf>,
    events: broadcast::Sender<Event>,
    cache: Mutex<LruCache>,
}

/// A bounded in-process cache (least recently used out first).
#[derive(Debug, Default)]
struct LruCache {
    entries: HashMap<String, (Vec<u8>, Instant, u64)>,
    bytes: usize,
    clock: u64,
}

const LOCAL_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Who holds a lock that could not be taken.
#[derive(Debug, Clone)]
pub struct Held {
    pub holder: String,
}

/// A held lock. It is renewed in the background while held; `release`
/// frees it (dropping it frees it too, asynchronously). A holder that dies
/// loses the lock when its TTL passes.
pub struct LockGuard {
    coordinator: Coordinator,
    key: String,
    token: String,
    renewal: CancellationToken,
    released: bool,
    /// The file lock held with an in-process lock (see `Local::lock_dir`).
    _file: Option<std::fs::File>,
}

const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

impl Coordinator {
    /// Connect to Redis; keys are prefixed with `prefix`.
    pub async fn redis(url: &str, prefix: &str) -> Result<Coordinator, CacheError> {
        let unavailable = |source| CacheError::Unavailable {
            url: redact(url),
            source,
        };
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(Coordinator::Redis {
            conn,
            prefix: prefix.to_string(),
        })
    }

    /// In-process locks, events and cache; with `lock_dir`, locks are also
    /// file locks there, shared by every process on this machine.
    pub fn local(lock_dir: Option<std::path::PathBuf>) -> Coordinator {
        let (events, _) = broadcast::channel(1024);
        Coordinator::Local(Arc::new(Local {
            lock_dir,
            locks: Mutex::new(HashMap::new()),
            events,
            cache: Mutex::new(LruCache::default()),
        }))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Coordinator::Redis { .. } => "redis",
            Coordinator::Local(_) => "in-process",
        }
    }

    fn key(&self, name: &str) -> String {
        match self {
            Coordinator::Redis { prefix, .. } => format!("{prefix}{name}"),
            Coordinator::Local(_) => name.to_string(),
        }
    }

    /// Take lock `name` for `holder` (e.g. a run id) unless someone holds it.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<Result<LockGuard, Held>, CacheError> {
        let key = self.key(&format!("lock:{name}"));
        let token = format!("{holder}:{}", uuid::Uuid::new_v4().simple());
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut file = None;
        let taken = match self {
            Coordinator::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await?;
                if set.is_none() {
                    let current: Option<String> = conn.get(&key).await?;
                    return Ok(Err(Held {
                        holder: current.map(|t| holder_of(&t)).unwrap_or_else(|| "(just released)".into()),
                    }));
                }
                true
            }
            Coordinator::Local(local) => {
                let mut locks = local.locks.lock().expect("lock table poisoned");
                let now = Instant::now();
                if let Some((current, expires)) = locks.get(&key)
                    && *expires > now
                {
                    return Ok(Err(Held {
                        holder: holder_of(current),
                    }));
                }
                if let Some(dir) = &local.lock_dir {
                    match lock_file(dir, &key, &token)? {
                        Ok(locked) => file = Some(locked),
                        Err(held) => return Ok(Err(held)),
                    }
                }
                locks.insert(key.clone(), (token.clone(), now + ttl));
                true
            }
        };
        debug_assert!(taken);
        let renewal = CancellationToken::new();
        let guard = LockGuard {
            coordinator: self.clone(),
            key: key.clone(),
            token: token.clone(),
            renewal: renewal.clone(),
            released: false,
            _file: file,
        };
        let coordinator = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis((ttl_ms / 3).max(10));
            loop {
                tokio::select! {
                    _ = renewal.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(err) = coordinator.renew(&key, &token, ttl).await {
                    tracing::warn!(%err, key, "renewing a lock failed");
                }
            }
        });
        Ok(Ok(guard))
    }

    /// Whether Redis answers `PING` (the in-process coordinator always does).
    pub async fn ping(&self) -> Result<(), CacheError> {
        match self {
            Coordinator::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
            Coordinator::Local(_) => Ok(()),
        }
    }

    async fn renew(&self, key: &str, token: &str, ttl: Duration) -> Result<(), CacheError> {
        match self {
            Coordinator::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: i64 = redis::Script::new(RENEW)
                    .key(key)
                    .arg(token)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await?;
            }
            Coordinator::Local(local) => {
                let mut locks = local.locks.lock().expect("lock table poisoned");
                if let Some((current, expires)) = locks.get_mut(key)
                    && current == token
                {
                    *expires = Instant::now() + ttl;
                }
            }
        }
        Ok(())
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), CacheError> {
        match self {
            Coordinator::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: i64 = redis::Script::new(RELEASE).key(key).arg(token).invoke_async(&mut conn).await?;
            }
            Coordinator::Local(local) => {
                let mut locks = local.locks.lock().expect("lock table poisoned");
                if locks.get(key).is_some_and(|(current, _)| current == token) {
                    locks.remove(key);
                }
            }
        }
        Ok(())
    }

    /// Append an event to the run events stream (XADD) or broadcast it.
    pub async fn publish(&self, event: Event) -> Result<(), CacheError> {
        match self {
            Coordinator::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let mut fields: Vec<(String, String)> = vec![("event".into(), event.kind.clone())];
                fields.extend(event.fields.iter().cloned());
                let _: String = conn.xadd(self.key(RUN_EVENTS_STREAM), "*", &fields).await?;
            }
            Coordinator::Local(local) => {
                let _ = local.events.send(event);
            }
        }
        Ok(())
    }

    /// In-process subscribers (the Redis stream is read with XREAD/XRANGE).
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Event>> {
        match self {
            Coordinator::Local(local) => Some(local.events.subscribe()),
            Coordinator::Redis { .. } => None,
        }
    }

    /// The cached value under `key`, if any; counted in the
    /// `workbench_cache_lookups` metric.
    pub async fn cache_get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let found = self.lookup(key).await;
        crate::metrics::cache_lookup(match &found {
            Ok(Some(_)) => "hit",
            Ok(None) => "miss",
            Err(_) => "error",
        });
        found
    }

    async fn lookup(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let key = self.key(&format!("cache:{key}"));
        match self {
            Coordinator::Redis { conn, .. } => {
                let mut conn = conn.clone();
                Ok(conn.get(&key).await?)
            }
            Coordinator::Local(local) => {
                let mut cache = local.cache.lock().expect("cache poisoned");
                cache.clock += 1;
                let clock = cache.clock;
                let now = Instant::now();
                match cache.entries.get_mut(&key) {
                    Some((value, expires, used)) if *expires > now => {
                        *used = clock;
                        Ok(Some(value.clone()))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    pub async fn cache_set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let key = self.key(&format!("cache:{key}"));
        match self {
            Coordinator::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: () = conn.pset_ex(&key, value, ttl.as_millis().max(1) as u64).await?;
            }
            Coordinator::Local(local) => {
                let mut cache = local.cache.lock().expect("cache poisoned");
                if value.len() > LOCAL_CACHE_BYTES {
                    return Ok(());
                }
                cache.clock += 1;
                let clock = cache.clock;
                if let Some((old, _, _)) = cache.entries.insert(key, (value.to_vec(), Instant::now() + ttl, clock)) {
                    cache.bytes -= old.len();
                }
                cache.bytes += value.len();
                while cache.bytes > LOCAL_CACHE_BYTES {
                    let Some(oldest) = cache.entries.iter().min_by_key(|(_, (_, _, used))| *used).map(|(k, _)| k.clone()) else {
                        break;
                    };
                    if let Some((old, _, _)) = cache.entries.remove(&oldest) {
                        cache.bytes -= old.len();
                    }
                }
            }
        }
        Ok(())
    }
}

impl LockGuard {
    /// Free the lock now.
    pub async fn release(mut self) -> Result<(), CacheError> {
        self.released = true;
        self.renewal.cancel();
        self.coordinator.unlock(&self.key, &self.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewal.cancel();
        if !self.released {
            let coordinator = self.coordinator.clone();
            let (key, token) = (self.key.clone(), self.token.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = coordinator.unlock(&key, &token).await;
                });
            }
        }
    }
}

/// Take the file lock for `key` in `dir` without waiting, writing `token`
/// into the file so that others can name the holder.
fn lock_file(dir: &std::path::Path, key: &str, token: &str) -> Result<Result<std::fs::File, Held>, CacheError> {
    use std::io::{Read, Seek, Write};
    let io = |source: std::io::Error| CacheError::LockFile {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let name: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    let path = dir.join(format!("{name}.lock"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut current = String::new();
            let _ = file.read_to_string(&mut current);
            return Ok(Err(Held {
                holder: if current.is_empty() { "(another process)".into() } else { holder_of(current.trim()) },
            }));
        }
        Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(token.as_bytes()).map_err(io)?;
    Ok(Ok(file))
}

fn holder_of(token: &str) -> String {
    token.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| token.to_string())
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
