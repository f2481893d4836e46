import KithCRDT

/// Dropping the change log's oldest records once every member has read them (the decision is
/// `LogTruncationPlan`'s in KithCluster; this carries it out). A record holds the entries of one
/// transaction under the sequence of its last entry, so a record goes whole: the log is truncated
/// through the key of the last record dropped, which may fall short of the point asked for.
extension StoreEngine {
    /// Returns how many records went.
    package func truncateLog(through sequence: UInt64, limit: Int, in txn: any StoreWriting) throws -> Int {
        let extent = try logExtent(in: txn)
        let target = min(sequence, extent.last)
        guard target > extent.truncatedThrough else { return 0 }
        var keys: [[UInt8]] = []
        try txn.scan(.changes, from: []) { key, _ in
            guard try decodeSequence(key) <= target else { return .stop }
            keys.append(key)
            return keys.count < limit ? .next : .stop
        }
        guard let lastKey = keys.last else { return 0 }
        for key in keys { try txn.delete(.changes, key) }
        let through = try decodeSequence(lastKey)
        // The copies that travel ahead of a backlog go with the entries they copy.
        var ahead: [[UInt8]] = []
        try txn.scan(.ahead, from: []) { key, _ in
            guard try decodeSequence(key) <= through else { return .stop }
            ahead.append(key)
            return .next
        }
        for key in ahead { try txn.delete(.ahead, key) }
        try txn.put(.meta, logTruncatedMetaKey, sequenceKey(max(extent.truncatedThrough, through)), mode: .upsert)
        return keys.count
    }
}
