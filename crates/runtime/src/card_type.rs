//! The trait every card type implements, and what it answers with.

use virtcard_codec::{Command, Status};

/// What the runtime does for a card type, decided once per type.
#[derive(Clone, Debug)]
pub struct CardProfile {
    /// Answer to reset (at most 33 bytes for PC/SC, 40 for QEMU).
    pub atr: Vec<u8>,
    /// Logical channels including the basic channel (1 = no MANAGE CHANNEL).
    pub logical_channels: u8,
    /// Reassemble CLA-bit-5 command chains before the card type sees them.
    pub command_chaining: bool,
    /// Accept extended Lc/Le; otherwise extended commands get `6700`.
    pub extended_length: bool,
    /// Let secure-messaging class bits through to the card type; otherwise `6882`.
    pub secure_messaging: bool,
    /// When Le is present but smaller than the data: `61xx` chaining, or `6Cxx`
    /// (the exact length) for card types whose reference behaviour is that.
    pub short_le: ShortLe,
    /// Largest reassembled command-chain data (guards memory).
    pub max_chained_data: usize,
}

impl CardProfile {
    /// A profile with the given ATR and the usual capabilities: 4 channels,
    /// chaining, short APDUs only, no secure messaging, `61xx` on short Le.
    pub fn new(atr: Vec<u8>) -> Self {
        CardProfile {
            atr,
            logical_channels: 4,
            command_chaining: true,
            extended_length: false,
            secure_messaging: false,
            short_le: ShortLe::GetResponse,
            max_chained_data: 65_536,
        }
    }
}

/// Answer when Le asks for fewer bytes than the card has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortLe {
    /// Return Le bytes and announce the rest with `61xx`.
    GetResponse,
    /// Return nothing but `6Cxx` (xx = available length, up to 256).
    WrongLe,
}

/// The response a card type is building for one command.
#[derive(Debug)]
pub struct Reply<'a> {
    data: &'a mut Vec<u8>,
    ne: usize,
    le_present: bool,
    channel: u8,
    changed: bool,
    short_le: Option<ShortLe>,
}

impl<'a> Reply<'a> {
    pub(crate) fn new(data: &'a mut Vec<u8>, ne: usize, le_present: bool, channel: u8) -> Self {
        data.clear();
        Reply {
            data,
            ne,
            le_present,
            channel,
            changed: false,
            short_le: None,
        }
    }

    /// The number of bytes the client expects (Ne). Without an Le field this is
    /// 256 on a T=1 link and 0 on T=0. Commands that read a part of a file cut
    /// their data to this; others return everything and let the runtime chain.
    pub fn ne(&self) -> usize {
        self.ne
    }

    /// Whether the command carried an Le field.
    pub fn le_present(&self) -> bool {
        self.le_present
    }

    /// The logical channel of the command.
    pub fn channel(&self) -> u8 {
        self.channel
    }

    /// Response data written so far.
    pub fn data(&self) -> &[u8] {
        self.data
    }

    /// Appends response data.
    pub fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    /// Direct access to the response buffer (for TLV encoders).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.data
    }

    /// Marks persistent state as changed: the runtime reports it so the state
    /// is saved before this response leaves.
    pub fn state_changed(&mut self) {
        self.changed = true;
    }

    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    /// Overrides the profile's short-Le behaviour for this response.
    pub fn on_short_le(&mut self, policy: ShortLe) {
        self.short_le = Some(policy);
    }

    pub(crate) fn short_le(&self) -> Option<ShortLe> {
        self.short_le
    }
}

/// The result of one command: `Ok(sw)` keeps the reply data, `Err(sw)` drops it.
pub type Outcome = Result<Status, Status>;

/// A card type: the logic of one kind of card, with no I/O.
///
/// The [`crate::Runtime`] around it handles class-byte checks, logical channels
/// (MANAGE CHANNEL), command chaining, GET RESPONSE and response sizing, and
/// power/reset; the card type sees only complete commands for open channels.
pub trait CardType: Send + 'static {
    /// Per-channel state: selection and security status of one logical channel.
    type Channel: Send;

    /// Short name of the type ("iso7816", "cac", "piv").
    fn kind(&self) -> &'static str;

    /// The runtime's behaviour for this type.
    fn profile(&self) -> &CardProfile;

    /// State of a newly opened channel. `from` is the channel the MANAGE
    /// CHANNEL command came on (`None` on reset, for the basic channel).
    fn open_channel(&mut self, from: Option<&Self::Channel>) -> Self::Channel;

    /// Processes one complete command on an open channel.
    fn process(
        &mut self,
        channel: &mut Self::Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome;

    /// Called on power-on and reset after every channel was closed: drop
    /// volatile card-wide state (not persistent state such as retry counters).
    fn reset(&mut self) {}

    /// Serialised persistent state, saved when a reply marked it changed.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
}
