//! rmcp's in-memory session manager, wrapped so that a tool can close its own SSE stream and
//! learn when the client resumed it (the `test_reconnection` fixture, SEP-1699).
//!
//! rmcp can close a request's SSE stream (`LocalSessionHandle::close_sse_stream`), but it
//! needs the stream's internal HTTP request id, which a handler never sees. This wrapper does
//! what `LocalSessionManager::create_stream` does, and on the way puts that id into the request's
//! extensions ([`StreamId`]), where the handler finds it in `RequestContext::extensions`. It
//! also signals every successful resume (`GET` + `Last-Event-ID`) per session, so the tool can
//! answer once the client listens again: rmcp drops a request's event cache as soon as the
//! answer is sent, so answering before the resume would lose it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, GetExtensions as _, ServerJsonRpcMessage};
use rmcp::transport::WorkerTransport;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionHandle, LocalSessionManager, LocalSessionManagerError, LocalSessionWorker,
};
use rmcp::transport::streamable_http_server::session::{ServerSseMessage, SessionId};
use rmcp::transport::streamable_http_server::{RestoreOutcome, SessionManager};
use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;

/// The session layer's id of the HTTP request (the SSE stream) that carries a JSON-RPC request,
/// put into the request's extensions by [`ConformanceSessions::create_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamId(pub(crate) u64);

/// [`LocalSessionManager`] plus stream ids for handlers and resume signals.
pub(crate) struct ConformanceSessions {
    inner: LocalSessionManager,
    resumed: Mutex<HashMap<SessionId, Arc<Notify>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConformanceSessions {
    /// A session manager whose request streams start with a priming event carrying `sse_retry`.
    pub(crate) fn new(sse_retry: Duration) -> Self {
        let mut inner = LocalSessionManager::default();
        inner.session_config.sse_retry = Some(sse_retry);
        Self {
            inner,
            resumed: Mutex::default(),
        }
    }

    /// The handle of session `id`, if it exists.
    pub(crate) async fn handle(&self, id: &str) -> Option<LocalSessionHandle> {
        self.inner.sessions.read().await.get(id).cloned()
    }

    /// Notified (`notify_waiters`) after each successful resume of a stream of session `id`.
    pub(crate) fn resume_signal(&self, id: &str) -> Arc<Notify> {
        lock(&self.resumed)
            .entry(SessionId::from(id))
            .or_default()
            .clone()
    }
}

impl SessionManager for ConformanceSessions {
    type Error = LocalSessionManagerError;
    type Transport = WorkerTransport<LocalSessionWorker>;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        lock(&self.resumed).remove(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        mut message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let handle = self
            .handle(id)
            .await
            .ok_or_else(|| LocalSessionManagerError::SessionNotFound(id.clone()))?;
        let receiver = handle.establish_request_wise_channel().await?;
        if let (ClientJsonRpcMessage::Request(request), Some(stream)) =
            (&mut message, receiver.http_request_id)
        {
            request.request.extensions_mut().insert(StreamId(stream));
        }
        handle
            .push_message(message, receiver.http_request_id)
            .await?;
        Ok(ReceiverStream::new(receiver.inner))
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.inner.resume(id, last_event_id).await?;
        self.resume_signal(id).notify_waiters();
        Ok(stream)
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }
}
