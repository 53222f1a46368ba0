//! The text channels' agent (issue 17, in progress; docs/architecture.md): the same business
//! brain as voice over the OpenAI Responses API with Conversations. So far its pure part: the
//! streamed answer read as a state machine ([`stream`]).

pub mod stream;
