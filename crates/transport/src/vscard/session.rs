//! The client side of a VSCard connection as a pure state machine.
//!
//! Frames from QEMU go in through [`ClientSession::receive`], user intents
//! through [`ClientSession::insert`] / [`ClientSession::remove`] /
//! [`ClientSession::shutdown`]. Bytes to send accumulate in
//! [`ClientSession::output`]; things the caller has to act on (an APDU for the
//! card, a card reset) come out of [`ClientSession::poll_event`]. No I/O, no
//! clock, so every path is testable byte for byte.

use std::collections::VecDeque;

use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::atr::{qemu_check, AtrProblem, PCSC_MAX_ATR};
use super::frame::{
    encode, error_code, init_payload, Frame, FrameError, Init, MsgType, READER_ID,
    UNDEFINED_READER_ID, VERSION,
};

/// Largest response QEMU's emulated reader passes to the guest (its 384-byte
/// bulk-in buffer less the CCID header). QEMU 7.2 silently drops anything
/// longer, so the guest would wait forever.
pub const MAX_GUEST_RESPONSE: usize = 374;

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No connection (before [`ClientSession::connect`]).
    Disconnected,
    /// Our `Init` is out; waiting for QEMU's.
    AwaitInit,
    /// Clean-up `ReaderRemove` and `ReaderAdd` are out; waiting for the answer
    /// to `ReaderAdd`.
    AddingReader,
    /// The reader exists; the card can come and go.
    Ready,
    /// QEMU refused the reader; nothing more can happen on this connection.
    ReaderRefused,
    /// `ReaderRemove` sent on shutdown.
    Closing,
}

/// What QEMU knows about our card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardState {
    Absent,
    /// `ATR` sent, waiting for QEMU's verdict.
    Inserting,
    Present,
    /// `CardRemove` sent.
    Removing,
}

/// Something the owner of the session must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A command APDU from the guest. Answer it, in order, with
    /// [`ClientSession::apdu_response`] or [`ClientSession::apdu_failed`].
    Apdu(Vec<u8>),
    /// The ATR is going out: the guest will see a fresh card. The protocol
    /// has no power or reset messages, so this is the only moment at which
    /// the card's volatile state can be reset.
    PowerOn,
    /// QEMU confirmed the reader.
    ReaderAdded,
    /// QEMU accepted the ATR: the guest sees a card.
    CardInserted,
    /// QEMU refused the ATR.
    CardRejected { code: u32 },
    /// QEMU confirmed the removal.
    CardRemoved,
    /// QEMU reported a failure of a request of ours.
    HostError { request: Request, code: u32 },
}

/// Our messages that QEMU answers with an `Error` reply, in the order sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    ReaderRemove,
    ReaderAdd,
    Atr,
    CardRemove,
    /// QEMU does not know `FlushComplete` and answers it with `Error{1}`.
    FlushComplete,
}

/// Misuse of the session by its owner (not a peer problem).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("QEMU would refuse this ATR: {0}")]
    Atr(#[from] AtrProblem),
    #[error("no APDU from QEMU is waiting for an answer")]
    NoApduPending,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The client side of one VSCard connection (reconnects reuse it).
#[derive(Debug)]
pub struct ClientSession {
    reader_name: String,
    phase: Phase,
    card: CardState,
    /// The ATR of the card the user wants in the reader, kept across
    /// connections so a reconnect re-inserts it.
    wanted: Option<Vec<u8>>,
    replies_due: VecDeque<Request>,
    apdus_owed: usize,
    output: Vec<u8>,
    events: VecDeque<Event>,
}

impl ClientSession {
    /// A session announcing a reader of this name (QEMU ignores the name).
    pub fn new(reader_name: impl Into<String>) -> ClientSession {
        ClientSession {
            reader_name: reader_name.into(),
            phase: Phase::Disconnected,
            card: CardState::Absent,
            wanted: None,
            replies_due: VecDeque::new(),
            apdus_owed: 0,
            output: Vec::new(),
            events: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn card_state(&self) -> CardState {
        self.card
    }

    /// Whether the user wants a card in the reader.
    pub fn card_wanted(&self) -> bool {
        self.wanted.is_some()
    }

    /// Our requests QEMU has not answered yet.
    pub fn replies_due(&self) -> usize {
        self.replies_due.len()
    }

    /// APDUs received and not answered yet.
    pub fn apdus_owed(&self) -> usize {
        self.apdus_owed
    }

    /// Bytes waiting to be sent, whole messages only.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Marks the output as sent.
    pub fn clear_output(&mut self) {
        self.output.clear();
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A new connection is up: start the handshake from the beginning. Any
    /// state of a previous connection is forgotten; the wanted card stays.
    pub fn connect(&mut self) {
        self.output.clear();
        self.events.clear();
        self.replies_due.clear();
        self.apdus_owed = 0;
        self.card = CardState::Absent;
        self.phase = Phase::AwaitInit;
        self.send(MsgType::Init, UNDEFINED_READER_ID, &init_payload());
    }

    /// The connection is gone.
    pub fn disconnected(&mut self) {
        self.phase = Phase::Disconnected;
        self.card = CardState::Absent;
        self.replies_due.clear();
        self.apdus_owed = 0;
        self.output.clear();
    }

    /// Puts a card with this ATR into the reader (now, or as soon as the
    /// reader exists). Inserting while a card is present re-inserts it, which
    /// QEMU reports to the guest as a new card.
    pub fn insert(&mut self, atr: &[u8]) -> Result<(), SessionError> {
        qemu_check(atr)?;
        if atr.len() > PCSC_MAX_ATR {
            warn!(
                len = atr.len(),
                "ATR is longer than the 33 bytes pcsc-lite accepts; the guest will not use it"
            );
        }
        self.wanted = Some(atr.to_vec());
        if self.phase == Phase::Ready {
            self.send_atr();
        }
        Ok(())
    }

    /// Takes the card out of the reader.
    pub fn remove(&mut self) {
        self.wanted = None;
        if matches!(self.card, CardState::Present | CardState::Inserting) {
            self.send_card_remove();
        }
    }

    /// Leaves cleanly: the guest sees the card and the reader go away instead
    /// of a card that silently stops answering.
    pub fn shutdown(&mut self) {
        if matches!(self.card, CardState::Present | CardState::Inserting) {
            self.send_card_remove();
        }
        if matches!(self.phase, Phase::Ready | Phase::AddingReader) {
            self.send(MsgType::ReaderRemove, READER_ID, &[]);
            self.replies_due.push_back(Request::ReaderRemove);
        }
        self.phase = Phase::Closing;
    }

    /// Answers the oldest unanswered APDU.
    pub fn apdu_response(&mut self, response: &[u8]) -> Result<(), SessionError> {
        if self.apdus_owed == 0 {
            return Err(SessionError::NoApduPending);
        }
        self.apdus_owed -= 1;
        if response.len() > MAX_GUEST_RESPONSE || response.len() < 2 {
            // A failed transmit in the guest beats a guest that hangs.
            error!(
                len = response.len(),
                "response APDU cannot reach the guest (QEMU passes 2..=374 bytes); failing the command instead"
            );
            self.send_error(error_code::GENERAL_ERROR);
            return Ok(());
        }
        self.send(MsgType::Apdu, READER_ID, response);
        Ok(())
    }

    /// Fails the oldest unanswered APDU: the guest sees a transmit error.
    pub fn apdu_failed(&mut self) -> Result<(), SessionError> {
        if self.apdus_owed == 0 {
            return Err(SessionError::NoApduPending);
        }
        self.apdus_owed -= 1;
        self.send_error(error_code::GENERAL_ERROR);
        Ok(())
    }

    /// Processes one frame from QEMU.
    pub fn receive(&mut self, frame: Frame) {
        match frame.msg_type {
            MsgType::Init => self.on_init(&frame),
            MsgType::Error => self.on_error(&frame),
            MsgType::Apdu => self.on_apdu(frame),
            MsgType::Flush => {
                debug!("Flush from QEMU; nothing is buffered, answering FlushComplete");
                self.send(MsgType::FlushComplete, READER_ID, &[]);
                self.replies_due.push_back(Request::FlushComplete);
            }
            MsgType::ReaderAdd
            | MsgType::ReaderRemove
            | MsgType::Atr
            | MsgType::CardRemove
            | MsgType::FlushComplete
            | MsgType::Unknown(_) => {
                warn!(
                    msg_type = frame.msg_type.to_u32(),
                    reader_id = frame.reader_id,
                    len = frame.payload.len(),
                    "ignoring unexpected {:?} message from QEMU (only a card provider sends it)",
                    frame.msg_type
                );
            }
        }
    }

    fn on_init(&mut self, frame: &Frame) {
        if self.phase != Phase::AwaitInit {
            info!(
                phase = ?self.phase,
                "ignoring repeated Init from QEMU (it sends one unprompted when the device starts)"
            );
            return;
        }
        match Init::parse(&frame.payload) {
            Ok(init) => {
                if !init.magic_ok() {
                    warn!(magic = ?init.magic, "Init from QEMU has the wrong magic; carrying on as QEMU does");
                }
                if init.version != VERSION {
                    info!(
                        version = init.version,
                        "QEMU speaks another VSCard version than 2"
                    );
                }
            }
            Err(e) => warn!("Init from QEMU is malformed ({e}); carrying on"),
        }
        // A previous client may have left a card "inserted" in QEMU (it keeps
        // it across disconnects); removing the reader first gives the guest a
        // clean removal/insertion edge.
        self.send(MsgType::ReaderRemove, READER_ID, &[]);
        self.replies_due.push_back(Request::ReaderRemove);
        let name = self.reader_name.clone();
        self.send(MsgType::ReaderAdd, UNDEFINED_READER_ID, name.as_bytes());
        self.replies_due.push_back(Request::ReaderAdd);
        self.phase = Phase::AddingReader;
    }

    fn on_error(&mut self, frame: &Frame) {
        let Some(code) = frame.error_code() else {
            warn!(
                len = frame.payload.len(),
                "ignoring Error message from QEMU without a 4-byte code"
            );
            return;
        };
        let Some(request) = self.replies_due.pop_front() else {
            if code == error_code::SUCCESS {
                info!("ignoring Error(success) from QEMU that answers no request of ours");
            } else {
                warn!(
                    code,
                    "ignoring Error from QEMU that answers no request of ours"
                );
            }
            return;
        };
        match (request, code) {
            (Request::ReaderAdd, error_code::SUCCESS) => {
                if self.phase == Phase::AddingReader {
                    self.phase = Phase::Ready;
                    self.events.push_back(Event::ReaderAdded);
                    if self.wanted.is_some() {
                        self.send_atr();
                    }
                }
            }
            (Request::ReaderAdd, code) => {
                error!(code, "QEMU refused the reader");
                if self.phase == Phase::AddingReader {
                    self.phase = Phase::ReaderRefused;
                }
                self.events.push_back(Event::HostError { request, code });
            }
            (Request::Atr, error_code::SUCCESS) => {
                if self.card == CardState::Inserting {
                    self.card = CardState::Present;
                    self.events.push_back(Event::CardInserted);
                }
            }
            (Request::Atr, code) => {
                error!(code, "QEMU refused the ATR; the guest sees no card");
                if self.card == CardState::Inserting {
                    self.card = CardState::Absent;
                }
                self.events.push_back(Event::CardRejected { code });
            }
            (Request::CardRemove, code) => {
                if code != error_code::SUCCESS {
                    warn!(code, "QEMU answered CardRemove with an error");
                }
                if self.card == CardState::Removing {
                    self.card = CardState::Absent;
                    self.events.push_back(Event::CardRemoved);
                }
            }
            (Request::ReaderRemove, error_code::SUCCESS) => {}
            (Request::ReaderRemove, code) => {
                warn!(code, "QEMU answered ReaderRemove with an error");
            }
            (Request::FlushComplete, code) => {
                debug!(
                    code,
                    "QEMU does not know FlushComplete and answered with an error, as expected"
                );
            }
        }
    }

    fn on_apdu(&mut self, frame: Frame) {
        let card_there = matches!(self.card, CardState::Present | CardState::Inserting);
        if !card_there {
            // QEMU answers the guest itself once the card is gone (or the
            // reader removed), so an answer now would fail an unrelated,
            // later command.
            warn!(
                len = frame.payload.len(),
                card = ?self.card,
                "dropping APDU from QEMU: no card is inserted on this connection"
            );
            return;
        }
        self.apdus_owed += 1;
        self.events.push_back(Event::Apdu(frame.payload));
    }

    fn send_atr(&mut self) {
        let Some(atr) = self.wanted.clone() else {
            return;
        };
        self.events.push_back(Event::PowerOn);
        self.send(MsgType::Atr, READER_ID, &atr);
        self.replies_due.push_back(Request::Atr);
        self.card = CardState::Inserting;
    }

    fn send_card_remove(&mut self) {
        self.send(MsgType::CardRemove, READER_ID, &[]);
        self.replies_due.push_back(Request::CardRemove);
        self.card = CardState::Removing;
        // QEMU answers the guest's pending commands itself on removal.
        self.apdus_owed = 0;
    }

    fn send_error(&mut self, code: u32) {
        self.send(MsgType::Error, READER_ID, &code.to_be_bytes());
    }

    fn send(&mut self, msg_type: MsgType, reader_id: u32, payload: &[u8]) {
        // Every payload built here is bounded (ATR ≤ 40, responses ≤ 374,
        // the reader name is cut below), so encoding cannot fail.
        let payload = if msg_type == MsgType::ReaderAdd {
            payload.get(..256).unwrap_or(payload)
        } else {
            payload
        };
        if let Err(e) = encode(msg_type, reader_id, payload, &mut self.output) {
            error!("cannot encode {msg_type:?}: {e}");
        }
    }
}
