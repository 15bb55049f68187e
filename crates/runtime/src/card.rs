//! The object-safe face of a card that transports talk to.

/// Transmission protocol the reader in front of the card uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Character protocol, as QEMU's emulated CCID reader speaks it: case-4
    /// commands arrive without Le, so response data is announced with `61xx`.
    T0,
    /// Block protocol, as vpcd reports: a command without Le still gets its
    /// data (clients such as yubico-piv-tool never send Le).
    T1,
}

/// What the link between reader and card can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub protocol: Protocol,
    /// Largest response the link carries, data plus SW1 SW2. Longer answers
    /// are split with `61xx` and served by GET RESPONSE.
    pub max_response: usize,
}

impl Link {
    /// vpcd: T=1, frames of up to 65 535 bytes.
    pub const VPCD: Link = Link {
        protocol: Protocol::T1,
        max_response: 65_535,
    };
    /// QEMU's `usb-ccid`: T=0, at most 374 bytes per response.
    pub const QEMU_CCID: Link = Link {
        protocol: Protocol::T0,
        max_response: 374,
    };
}

impl Default for Link {
    fn default() -> Self {
        Link::VPCD
    }
}

/// A card as a reader sees it: power, ATR, and APDU exchange.
///
/// Implemented by [`crate::Runtime`] for every card type, and by wrappers
/// (persistence, relays). Transports hold a `Box<dyn Card>` and know nothing
/// else about what the card is.
pub trait Card: Send {
    /// The answer to reset. Available whether or not the card is powered.
    fn atr(&self) -> &[u8];
    /// Cold reset: power applied. Clears volatile state (selection, security
    /// status, pending responses, open channels).
    fn power_on(&mut self);
    /// Power removed. Volatile state is dropped; APDUs that still arrive power
    /// the card up again implicitly.
    fn power_off(&mut self);
    /// Warm reset: the same volatile-state reset as power-on.
    fn reset(&mut self);
    /// Whether power is applied.
    fn is_powered(&self) -> bool;
    /// Processes one command APDU. `response` is cleared and receives the
    /// response APDU (data followed by SW1 SW2); it is never empty.
    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>);
    /// Tells the card what the link in front of it carries.
    fn set_link(&mut self, link: Link);
    /// Persistent state as it should be saved, if it changed since the last
    /// call. The caller writes it durably before it returns the response that
    /// caused it, so a crash can never undo a retry-counter decrement.
    fn take_state_change(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// A short human-readable name of the card type ("iso7816", "cac", …).
    fn kind(&self) -> &str;
}

impl<T: Card + ?Sized> Card for Box<T> {
    fn atr(&self) -> &[u8] {
        (**self).atr()
    }
    fn power_on(&mut self) {
        (**self).power_on()
    }
    fn power_off(&mut self) {
        (**self).power_off()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn is_powered(&self) -> bool {
        (**self).is_powered()
    }
    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        (**self).transmit(command, response)
    }
    fn set_link(&mut self, link: Link) {
        (**self).set_link(link)
    }
    fn take_state_change(&mut self) -> Option<Vec<u8>> {
        (**self).take_state_change()
    }
    fn kind(&self) -> &str {
        (**self).kind()
    }
}
