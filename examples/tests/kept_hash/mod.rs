//! What the model tests share: the check that a state's kept hash is the one a walk gives, and
//! that a snapshot of it decodes to the same state.

use keel_engine::StateMachine;
use keel_examples::rng::SplitMix64;

/// After about one command in four (by `rng`, which the test keeps apart from the one that
/// makes its commands), checks that `machine`'s state hash equals its snapshot copy's. The
/// live state sums the hashes it kept, bringing up to date those of the places changed since
/// the last hash (one command ago, or many); the copy keeps none, so its hash walks everything:
/// a change that was not marked shows here. One check in ten also encodes the copy, decodes it,
/// checks the decoded state's hash (a decoded state sums everything afresh), and puts the
/// decoded state in `machine`'s place, so that the rest of the run goes on from a loaded one.
/// `context` names the seed and the command for the failure's message.
pub fn check_kept_hash<M: StateMachine>(
    machine: &mut M,
    rng: &mut SplitMix64,
    context: impl Fn() -> String,
) {
    if !rng.chance(250) {
        return;
    }
    let hash = machine.state_hash();
    let copy = machine.copy_for_snapshot(&mut None);
    assert_eq!(copy.state_hash(), hash, "{}: the kept hash is not a walk's", context());
    if rng.chance(100) {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&copy, config).expect("encodes");
        let (decoded, _): (M, _) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
        assert_eq!(decoded.state_hash(), hash, "{}: the decoded state's hash", context());
        *machine = decoded;
    }
}
