//! How the actors answer. A handler does on the actor only what needs the actor: reading or
//! changing what it owns, quick and synchronous. The rest, the I/O, goes back to the caller as a
//! [`Reply`], which [`Ask::ask`] awaits on the caller's own thread: the database and Redis work
//! of each HTTP worker is polled on that worker, and no single thread carries a pod's I/O.
use std::future::Future;

use actix::{
    dev::{MessageResponse, OneshotSender, ToEnvelope},
    Actor, Addr, Handler, MailboxError, Message,
};
use futures_util::future::BoxFuture;

use crate::error::{ApiError, PublicError};

/// The part of a message's work that runs on the caller's thread.
pub struct Reply<T>(BoxFuture<'static, T>);

impl<T> Reply<T> {
    pub fn new(work: impl Future<Output = T> + Send + 'static) -> Self {
        Reply(Box::pin(work))
    }
}

/// Hands the reply to the caller as it is; actix does not poll it on the actor.
impl<A, M, T> MessageResponse<A, M> for Reply<T>
where
    A: Actor,
    M: Message<Result = Reply<T>>,
{
    fn handle(self, _: &mut A::Context, tx: Option<OneshotSender<Self>>) {
        if let Some(tx) = tx {
            // The caller has gone (request cancelled): nothing to run.
            let _ = tx.send(self);
        }
    }
}

/// The actor did not take the message: it has stopped (shutdown), or its mailbox closed. Clients
/// see a neutral 503; the cause is logged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the {actor} actor did not take the message: {cause}")]
pub struct Unreachable {
    pub actor: &'static str,
    pub cause: MailboxError,
}

pub trait Ask<A: Actor> {
    /// Sends `msg` and runs its reply here.
    fn ask<M, T, E>(&self, msg: M) -> impl Future<Output = Result<T, E>> + 'static
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message<Result = Reply<Result<T, E>>> + Send + 'static,
        T: Send + 'static,
        E: From<Unreachable> + Send + 'static;

    /// Sends `msg` and runs its reply on this thread in the background (fire and forget).
    fn tell<M>(&self, msg: M)
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message<Result = Reply<()>> + Send + 'static;
}

impl<A: Actor> Ask<A> for Addr<A> {
    fn ask<M, T, E>(&self, msg: M) -> impl Future<Output = Result<T, E>> + 'static
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message<Result = Reply<Result<T, E>>> + Send + 'static,
        T: Send + 'static,
        E: From<Unreachable> + Send + 'static,
    {
        let sent = self.send(msg);
        async move {
            match sent.await {
                Ok(reply) => reply.0.await,
                Err(cause) => Err(E::from(Unreachable {
                    actor: actor_name::<A>(),
                    cause,
                })),
            }
        }
    }

    fn tell<M>(&self, msg: M)
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message<Result = Reply<()>> + Send + 'static,
    {
        let sent = self.send(msg);
        actix::spawn(async move {
            if let Ok(reply) = sent.await {
                reply.0.await;
            }
        });
    }
}

/// `SessionRegistry` from `sessiond::session::registry::SessionRegistry`.
fn actor_name<A>() -> &'static str {
    let path = std::any::type_name::<A>();
    path.rsplit("::").next().unwrap_or(path)
}

/// An actor that did not take a message (shutting down): the client learns only that the
/// service is unavailable for now.
impl PublicError for Unreachable {
    fn into_api_error(self) -> ApiError {
        ApiError::Unavailable {
            what: "service",
            detail: self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use actix::{ActorContext, Context};

    use super::*;
    use crate::error::ApiError;

    struct Echo;

    impl Actor for Echo {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "Reply<Result<std::thread::ThreadId, ApiError>>")]
    struct WhereAmI;

    impl Handler<WhereAmI> for Echo {
        type Result = Reply<Result<std::thread::ThreadId, ApiError>>;

        fn handle(&mut self, _: WhereAmI, _: &mut Context<Self>) -> Self::Result {
            Reply::new(async { Ok(std::thread::current().id()) })
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Halt;

    impl Handler<Halt> for Echo {
        type Result = ();

        fn handle(&mut self, _: Halt, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    #[actix_web::test]
    async fn the_reply_runs_on_the_callers_thread() {
        let arbiter = actix::Arbiter::new();
        let echo = Echo::start_in_arbiter(&arbiter.handle(), |_| Echo);
        let ran_on = echo.ask(WhereAmI).await.expect("answered");
        assert_eq!(ran_on, std::thread::current().id());
        arbiter.stop();
    }

    #[actix_web::test]
    async fn a_stopped_actor_is_a_neutral_503() {
        let echo = Echo.start();
        echo.send(Halt).await.expect("halted");
        let e = echo.ask(WhereAmI).await.expect_err("the actor has stopped");
        assert_eq!(
            e.code(),
            (
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable"
            )
        );
        assert_eq!(e.to_string(), "service is unavailable, retry later");
    }
}
