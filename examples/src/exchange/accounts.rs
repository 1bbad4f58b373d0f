//! The exchange's accounts: their balances by asset slot, and the kept hashes of those
//! balances, which every change of a balance marks. The only way to change a balance is
//! [`Accounts::balance_mut`], so no change escapes the state hash.

use std::cell::RefCell;

use serde::{Deserialize, Serialize, Serializer};

use crate::hash::{hash_words, SlotHashes};

/// One asset's balance in an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Balance {
    /// Free to trade or withdraw.
    pub available: u64,
    /// Held by resting orders.
    pub held: u64,
}

/// An account and its balances.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its id.
    pub id: u64,
    /// Its balances by asset slot (the exchange numbers the assets it has seen, in the order it
    /// saw them), as long as the highest slot the account has touched. A symbol knows its two
    /// assets' slots, so a trade finds the four balances it moves by index, with no search.
    pub(super) balances: Vec<Balance>,
}

impl Clone for Account {
    fn clone(&self) -> Self {
        Self { id: self.id, balances: self.balances.clone() }
    }

    /// Copies into the existing balances' allocation: a snapshot's copy of every account then
    /// allocates nothing once the previous copy is handed back.
    fn clone_from(&mut self, source: &Self) {
        self.id = source.id;
        self.balances.clone_from(&source.balances);
    }
}

impl Account {
    /// The balance in asset slot `slot` (zero if the account never held it).
    pub(super) fn at(&self, slot: u32) -> Balance {
        self.balances.get(slot as usize).copied().unwrap_or_default()
    }
}

/// Lengthens an account's balances to hold asset slot `asset`: once per account and asset.
#[cold]
fn grow(balances: &mut Vec<Balance>, asset: usize) {
    balances.resize(asset + 1, Balance::default());
}

/// The accounts by slot (in opening order), with a hash kept for each (account, asset) balance:
/// hash slot `account × assets + asset`, where `assets` is how many assets the exchange has
/// seen. A balance the account never touched hashes as a zero balance, so the hash is of what
/// the balances are, not of how far each account's vector grew.
#[derive(Debug, Default)]
pub(super) struct Accounts {
    list: Vec<Account>,
    /// How many assets the exchange has seen: the hash slots' stride.
    assets: usize,
    /// Behind a `RefCell` because a state hash (which takes `&self`) brings them up to date.
    hashes: RefCell<SlotHashes>,
}

impl Clone for Accounts {
    fn clone(&self) -> Self {
        Self { list: self.list.clone(), assets: self.assets, hashes: self.hashes.clone() }
    }

    /// Copies the accounts into the existing allocations, not the kept hashes: a snapshot's
    /// copy (the only user) is encoded, and hashed at most once, which walks it.
    fn clone_from(&mut self, source: &Self) {
        self.list.clone_from(&source.list);
        self.assets = source.assets;
        self.hashes.get_mut().forget();
    }
}

/// Encoded as the list alone, as before the hashes were kept: the snapshot's format is the
/// same, and a decoded exchange hashes every balance once.
impl Serialize for Accounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.list.serialize(serializer)
    }
}

impl std::ops::Deref for Accounts {
    type Target = [Account];

    fn deref(&self) -> &[Account] {
        &self.list
    }
}

impl Accounts {
    /// Decoded accounts of an exchange that has seen `assets` assets.
    pub(super) fn new(list: Vec<Account>, assets: usize) -> Self {
        Self { list, assets, hashes: RefCell::default() }
    }

    pub(super) fn reserve(&mut self, accounts: usize) {
        self.list.reserve(accounts);
    }

    /// Opens an account with no balances; returns its slot.
    pub(super) fn open(&mut self, id: u64) -> u32 {
        self.list.push(Account { id, balances: Vec::new() });
        // Its hash slots are past the last sum's end: the next sum hashes them unmarked.
        (self.list.len() - 1) as u32
    }

    /// Notes that the exchange has seen one more asset. Every hash slot moves, so the next sum
    /// hashes all of them; assets are few and arrive with a listing or a first deposit.
    pub(super) fn add_asset(&mut self) {
        self.assets += 1;
        self.hashes.get_mut().forget();
    }

    /// The balance of `account` in asset slot `asset`, to change.
    #[inline(always)]
    pub(super) fn balance_mut(&mut self, account: u32, asset: u32) -> &mut Balance {
        debug_assert!((asset as usize) < self.assets, "asset slot {asset} not seen");
        self.hashes.get_mut().mark(u64::from(account) * self.assets as u64 + u64::from(asset));
        let balances = &mut self.list[account as usize].balances;
        let asset = asset as usize;
        if asset >= balances.len() {
            grow(balances, asset);
        }
        &mut balances[asset]
    }

    /// The sum of every balance's hash (the account's slot and id, the asset's slot, the
    /// amounts), hashing only the balances changed since the last sum.
    pub(super) fn digest(&self) -> u64 {
        let assets = self.assets;
        let len = self.list.len() * assets;
        self.hashes.borrow_mut().sum(
            len,
            |hash_slot| {
                let (account, asset) = (hash_slot / assets, hash_slot % assets);
                let balance = self.list[account].at(asset as u32);
                hash_words(&[
                    ((account as u64) << 32) | asset as u64,
                    self.list[account].id,
                    balance.available,
                    balance.held,
                ])
            },
            |hash_slot| {
                // The account's line; its balances' place is known only once that is read.
                keel_engine::prefetch(&self.list[hash_slot / assets]);
            },
        )
    }
}
