import KithProfile

/// What a store keeps only for replication (`StoreConfiguration.replicates`): the digest tree
/// that anti-entropy compares, and the copies of log entries that travel ahead of a backlog
/// (`Table.ahead`). Both are derived, the tree from the rows and the copies from the log, so a
/// store drops them while it has no peers and rebuilds them when it gets some. A mark in `meta`
/// says that each is complete; a store opened to replicate rebuilds what has no mark.
extension StoreEngine {
    /// Whether opening the store must write to bring its replication state in line with its
    /// configuration (most opens need not: they find both marks, or neither).
    package func replicationStateNeedsWork(in reader: some StoreReading) throws -> Bool {
        let tree = try reader.get(.meta, digestsMetaKey), ahead = try reader.get(.meta, aheadMetaKey)
        if configuration.replicates { return tree != [DigestTree.layout] || ahead != [Self.aheadLayout] }
        return tree != nil || ahead != nil
    }

    /// Rebuilds what a replicating store lacks, or drops what a store without peers has: state
    /// that writes stopped following must never be read later.
    package func reconcileReplicationState(in txn: any StoreWriting) throws {
        if configuration.replicates {
            if try txn.get(.meta, digestsMetaKey) != [DigestTree.layout] { try rebuildDigests(in: txn) }
            if try txn.get(.meta, aheadMetaKey) != [Self.aheadLayout] { try rebuildAhead(in: txn) }
        } else {
            try dropDigests(in: txn)
            _ = try txn.deletePrefix(.ahead, [])
            try txn.delete(.meta, aheadMetaKey)
        }
    }

    /// The `ahead` mark's value: the copies are those the log's entries call for (`travelsAhead`).
    static let aheadLayout: UInt8 = 1

    /// Copies every logged entry that travels ahead, as `WriteContext.finish` would have.
    private func rebuildAhead(in txn: any StoreWriting) throws {
        _ = try txn.deletePrefix(.ahead, [])
        try keepAhead(try changes(after: 0, limit: .max, in: txn), in: txn)
        try txn.put(.meta, aheadMetaKey, [Self.aheadLayout], mode: .upsert)
    }

    /// The `ahead` copies of those of `entries` (newly logged, in order) that travel ahead:
    /// written by every commit of a replicating store, and by the rebuild.
    func keepAhead(_ entries: [ChangeEntry], in txn: any StoreWriting) throws {
        for entry in entries where entry.travelsAhead {
            try txn.put(.ahead, sequenceKey(entry.sequence), ProfileFormat.encode(entry), mode: .append)
        }
    }
}
