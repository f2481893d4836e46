import KithCRDT
import KithCrypto
import KithProfile

/// Changes replicated from peers, in their place or ahead of it, and how far each peer was read.
extension WriteContext {
    // MARK: Replication

    /// Applies a change replicated from another node, unless this replica already holds it.
    /// Returns whether it was new here.
    func applyReplicated(_ entry: ChangeEntry) throws -> Bool {
        var held = try versions ?? engine.versionVector(in: txn)
        guard entry.origin != engine.configuration.node, !held.covers(origin: entry.origin, sequence: entry.originSequence) else {
            versions = held
            return false
        }
        held.advance(origin: entry.origin, to: entry.originSequence)
        versions = held
        let origin = ChangeOrigin(node: entry.origin, sequence: entry.originSequence)
        switch entry.change {
        case .message(let delta): _ = try apply(delta, origin: origin)
        case .unlink(let edge, let stamp): try removeLink(edge, stamp: stamp, origin: origin)
        case .erasure(let keys, let time): try applyErasure(forgetKeys: keys, time: time, origin: origin)
        case .setting(let name, let value, let stamp): try setSetting(name, value, stamp: stamp, origin: origin)
        }
        return true
    }

    /// An erasure or consent decision sent ahead of the backlog it sits in: its effect now,
    /// while its place in the origin's order (version vector, log) waits for the entry itself,
    /// which is then applied again, changes nothing, and is logged for the peers further away.
    func applyAhead(_ entry: ChangeEntry) throws {
        switch entry.change {
        case .erasure(let keys, let time):
            try forgetHashed(keys, ForgetRecord(time: time, by: ChangeOrigin(node: entry.origin, sequence: entry.originSequence)))
        case .message(let delta): _ = try apply(delta, origin: nil, logged: false, acceptedBy: entry.origin)
        case .unlink, .setting: break
        }
    }

    /// Records how far this node has read `peer`'s log.
    func setCursor(_ position: UInt64, of peer: UInt64) throws {
        // Only forward: a late duplicate reply must not rewind it.
        if let current = try txn.get(.meta, cursorKey(peer)), try engine.decodeSequence(current) >= position { return }
        try txn.put(.meta, cursorKey(peer), sequenceKey(position), mode: .upsert)
    }
}
