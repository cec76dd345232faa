//! PostgreSQL advisory locks held on a session of their own, for work that spans many
//! panel calls and must not overlap across processes.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// An advisory lock held on a pooled session until [`SessionLock::release`].
///
/// Dropped without a release (the work was cancelled), the session is closed rather than
/// returned to the pool, so the lock never outlives the work on a pooled session.
pub(crate) struct SessionLock {
    session: Option<PoolConnection<Postgres>>,
    key: String,
}

impl SessionLock {
    /// Waits for the lock named `key`, however long another process holds it: each wait
    /// is bounded by the session's lock timeout, and begun again when it runs out.
    pub(crate) async fn acquire(pool: &PgPool, key: String) -> Result<Self, sqlx::Error> {
        let mut session = pool.acquire().await?;
        loop {
            let locked = sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .execute(&mut *session)
                .await;
            match locked {
                Ok(_) => break,
                Err(error) if eventstore::is_lock_timeout(&error) => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(Self {
            session: Some(session),
            key,
        })
    }

    /// Takes the lock named `key` if nobody holds it.
    pub(crate) async fn try_acquire(
        pool: &PgPool,
        key: String,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut session = pool.acquire().await?;
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut *session)
                .await?;
        Ok(taken.then_some(Self {
            session: Some(session),
            key,
        }))
    }

    /// Releases the lock. Should the unlock fail, the session is closed instead, which
    /// releases it just the same.
    pub(crate) async fn release(mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(&self.key)
            .execute(&mut *session)
            .await;
        if unlocked.is_err() {
            session.close_on_drop();
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(session) = self.session.as_mut() {
            session.close_on_drop();
        }
    }
}
