//! The runtime around a card type: everything ISO 7816-4 says about the
//! transmission of commands, independent of what the card does with them.

use crate::card::{Card, Link, Protocol};
use crate::card_type::{CardType, Reply, ShortLe};
use virtcard_codec::apdu::SecureMessaging;
use virtcard_codec::{Command, Status};

const INS_MANAGE_CHANNEL: u8 = 0x70;
const INS_GET_RESPONSE: u8 = 0xC0;

/// Response bytes waiting for GET RESPONSE on one channel.
#[derive(Debug, Default)]
struct Pending {
    data: Vec<u8>,
    pos: usize,
    status: Option<Status>,
}

impl Pending {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn clear(&mut self) {
        self.data.clear();
        self.pos = 0;
        self.status = None;
    }
}

/// A command chain being reassembled on one channel.
#[derive(Debug, Default)]
struct Chain {
    active: bool,
    /// Class base, INS, P1, P2 of the chain's first command.
    header: [u8; 4],
    data: Vec<u8>,
}

struct Channel<S> {
    state: S,
    pending: Pending,
    chain: Chain,
}

/// A card type inside the runtime: a complete [`Card`].
pub struct Runtime<C: CardType> {
    card: C,
    channels: Vec<Option<Channel<C::Channel>>>,
    link: Link,
    powered: bool,
    dirty: bool,
    /// Scratch buffer for reassembled chains, kept to avoid reallocating.
    scratch: Vec<u8>,
}

impl<C: CardType> Runtime<C> {
    pub fn new(card: C) -> Self {
        let n = card.profile().logical_channels.clamp(1, 20) as usize;
        let mut rt = Runtime {
            card,
            channels: (0..n).map(|_| None).collect(),
            link: Link::default(),
            powered: false,
            dirty: false,
            scratch: Vec::new(),
        };
        rt.reset_channels();
        rt
    }

    /// The card type inside.
    pub fn card(&self) -> &C {
        &self.card
    }

    /// Mutable access to the card type (provisioning, tests).
    pub fn card_mut(&mut self) -> &mut C {
        &mut self.card
    }

    fn reset_channels(&mut self) {
        for ch in self.channels.iter_mut() {
            *ch = None;
        }
        let state = self.card.open_channel(None);
        self.channels[0] = Some(Channel {
            state,
            pending: Pending::default(),
            chain: Chain::default(),
        });
        self.card.reset();
    }

    fn max_data(&self) -> usize {
        self.link.max_response.saturating_sub(2).max(1)
    }

    fn respond_status(out: &mut Vec<u8>, sw: Status) {
        out.clear();
        out.extend_from_slice(&sw.to_bytes());
    }

    /// The core: one command in, one response out.
    fn exchange(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let cmd = match Command::parse(raw) {
            Ok(c) => c,
            Err(e) => return Self::respond_status(out, e.status()),
        };
        if !cmd.cla.is_valid() || cmd.cla.is_reserved() {
            return Self::respond_status(out, Status::ClaNotSupported);
        }
        let profile = self.card.profile();
        if cmd.extended && !profile.extended_length {
            return Self::respond_status(out, Status::WrongLength);
        }
        if cmd.cla.is_interindustry()
            && cmd.cla.secure_messaging() != SecureMessaging::None
            && !profile.secure_messaging
        {
            return Self::respond_status(out, Status::SecureMessagingNotSupported);
        }
        let ch = cmd.cla.channel() as usize;
        if ch >= self.channels.len() || self.channels[ch].is_none() {
            return Self::respond_status(out, Status::LogicalChannelNotSupported);
        }
        let interindustry = cmd.cla.is_interindustry();

        if interindustry && cmd.ins == INS_GET_RESPONSE {
            return self.get_response(ch, &cmd, out);
        }
        if let Some(channel) = self.channels[ch].as_mut() {
            channel.pending.clear();
        }
        if interindustry && cmd.ins == INS_MANAGE_CHANNEL {
            return self.manage_channel(ch, &cmd, out);
        }
        self.chained_or_process(ch, cmd, out);
    }

    fn get_response(&mut self, ch: usize, cmd: &Command<'_>, out: &mut Vec<u8>) {
        let max = self.max_data();
        let Some(channel) = self.channels[ch].as_mut() else {
            return Self::respond_status(out, Status::LogicalChannelNotSupported);
        };
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Self::respond_status(out, Status::IncorrectP1P2);
        }
        let pending = &mut channel.pending;
        let Some(final_status) = pending.status else {
            return Self::respond_status(out, Status::ConditionsNotSatisfied);
        };
        let ne = cmd.ne.unwrap_or(256);
        let n = pending.remaining().min(ne).min(max);
        out.extend_from_slice(&pending.data[pending.pos..pending.pos + n]);
        pending.pos += n;
        let left = pending.remaining();
        if left == 0 {
            out.extend_from_slice(&final_status.to_bytes());
            pending.clear();
        } else {
            out.extend_from_slice(&Status::BytesRemaining(left.min(256) as u8).to_bytes());
        }
    }

    fn manage_channel(&mut self, ch: usize, cmd: &Command<'_>, out: &mut Vec<u8>) {
        if self.channels.len() < 2 {
            return Self::respond_status(out, Status::InsNotSupported);
        }
        match (cmd.p1, cmd.p2) {
            // Open: P2 = 0 lets the card choose and return the number.
            (0x00, want) => {
                if !cmd.data.is_empty() {
                    return Self::respond_status(out, Status::WrongLength);
                }
                let target = if want == 0 {
                    match self.channels.iter().position(Option::is_none) {
                        Some(i) => i,
                        None => return Self::respond_status(out, Status::FunctionNotSupported),
                    }
                } else {
                    let w = want as usize;
                    if w >= self.channels.len() {
                        return Self::respond_status(out, Status::IncorrectP1P2);
                    }
                    if self.channels[w].is_some() {
                        return Self::respond_status(out, Status::ConditionsNotSatisfied);
                    }
                    w
                };
                // Opened from the basic channel: fresh state; from another: copied selection.
                let from = if ch == 0 {
                    None
                } else {
                    self.channels[ch].as_ref().map(|c| &c.state)
                };
                let state = self.card.open_channel(from);
                self.channels[target] = Some(Channel {
                    state,
                    pending: Pending::default(),
                    chain: Chain::default(),
                });
                if want == 0 {
                    out.push(target as u8);
                }
                out.extend_from_slice(&Status::Success.to_bytes());
            }
            // Close: P2 names the channel, or 0 for the one the command came on.
            (0x80, which) => {
                let w = if which == 0 { ch } else { which as usize };
                if w == 0 || w >= self.channels.len() {
                    return Self::respond_status(out, Status::IncorrectP1P2);
                }
                if self.channels[w].take().is_none() {
                    return Self::respond_status(out, Status::LogicalChannelNotSupported);
                }
                Self::respond_status(out, Status::Success);
            }
            _ => Self::respond_status(out, Status::IncorrectP1P2),
        }
    }

    fn chained_or_process(&mut self, ch: usize, cmd: Command<'_>, out: &mut Vec<u8>) {
        let chaining = self.card.profile().command_chaining;
        let max_chain = self.card.profile().max_chained_data;
        let Some(channel) = self.channels[ch].as_mut() else {
            return Self::respond_status(out, Status::LogicalChannelNotSupported);
        };
        let header = [cmd.cla.base(), cmd.ins, cmd.p1, cmd.p2];
        let chain = &mut channel.chain;
        let continues = chain.active && chain.header == header;
        if cmd.cla.is_chained() {
            if !chaining {
                return Self::respond_status(out, Status::ChainingNotSupported);
            }
            if !continues {
                chain.data.clear();
                chain.header = header;
                chain.active = true;
            }
            if chain.data.len() + cmd.data.len() > max_chain {
                chain.active = false;
                chain.data.clear();
                return Self::respond_status(out, Status::WrongLength);
            }
            chain.data.extend_from_slice(cmd.data);
            return Self::respond_status(out, Status::Success);
        }
        if continues {
            if chain.data.len() + cmd.data.len() > max_chain {
                chain.active = false;
                chain.data.clear();
                return Self::respond_status(out, Status::WrongLength);
            }
            let mut whole = std::mem::take(&mut self.scratch);
            whole.clear();
            whole.extend_from_slice(&chain.data);
            whole.extend_from_slice(cmd.data);
            chain.active = false;
            chain.data.clear();
            let full = Command {
                data: &whole,
                ..cmd
            };
            self.process(ch, &full, out);
            self.scratch = whole;
        } else {
            // Any other command abandons a chain in progress.
            chain.active = false;
            chain.data.clear();
            self.process(ch, &cmd, out);
        }
    }

    fn process(&mut self, ch: usize, cmd: &Command<'_>, out: &mut Vec<u8>) {
        let le_present = cmd.ne.is_some();
        let ne = match (cmd.ne, self.link.protocol) {
            (Some(n), _) => n,
            (None, Protocol::T1) => {
                if cmd.extended {
                    65_536
                } else {
                    256
                }
            }
            (None, Protocol::T0) => 0,
        };
        let max = self.max_data();
        let profile_short_le = self.card.profile().short_le;
        let Some(channel) = self.channels[ch].as_mut() else {
            return Self::respond_status(out, Status::LogicalChannelNotSupported);
        };
        let mut reply = Reply::new(out, ne, le_present, ch as u8);
        let outcome = self.card.process(&mut channel.state, cmd, &mut reply);
        let changed = reply.changed();
        let short_le = reply.short_le().unwrap_or(profile_short_le);

        if changed {
            self.dirty = true;
        }
        let status = match outcome {
            Ok(sw) => sw,
            Err(sw) => return Self::respond_status(out, sw),
        };
        let deliver = ne.min(max);
        if out.len() <= deliver {
            out.extend_from_slice(&status.to_bytes());
            return;
        }
        if short_le == ShortLe::WrongLe && le_present && out.len() <= 256 {
            let n = out.len();
            return Self::respond_status(out, Status::WrongLe((n % 256) as u8));
        }
        let pending = &mut channel.pending;
        pending.clear();
        pending.data.extend_from_slice(&out[deliver..]);
        pending.status = Some(status);
        out.truncate(deliver);
        let left = pending.remaining();
        out.extend_from_slice(&Status::BytesRemaining(left.min(256) as u8).to_bytes());
    }
}

impl<C: CardType> Card for Runtime<C> {
    fn atr(&self) -> &[u8] {
        &self.card.profile().atr
    }

    fn power_on(&mut self) {
        self.powered = true;
        self.reset_channels();
    }

    fn power_off(&mut self) {
        self.powered = false;
        self.reset_channels();
    }

    fn reset(&mut self) {
        self.powered = true;
        self.reset_channels();
    }

    fn is_powered(&self) -> bool {
        self.powered
    }

    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        // A reader that never powers the card (Windows' vpcd) still gets answers.
        self.powered = true;
        self.exchange(command, response);
        if response.is_empty() {
            Self::respond_status(response, Status::Unknown);
        }
    }

    fn set_link(&mut self, link: Link) {
        self.link = link;
    }

    fn take_state_change(&mut self) -> Option<Vec<u8>> {
        if std::mem::take(&mut self.dirty) {
            Some(self.card.save())
        } else {
            None
        }
    }

    fn kind(&self) -> &str {
        self.card.kind()
    }
}
