import KithCRDT
import KithProfile

/// Dropping the change log's oldest records once every member has read them (the decision is
/// `LogTruncationPlan`'s in KithCluster; this carries it out). A record holds the entries of one
/// transaction under the sequence of its last entry, so a record goes whole: the log is truncated
/// through the key of the last record dropped, which may fall short of the point asked for.
extension StoreEngine {
    /// Returns how many records went. Records a log marked incomplete still holds below its
    /// truncation point go too.
    package func truncateLog(through sequence: UInt64, limit: Int, in txn: any StoreWriting) throws -> Int {
        let extent = try logExtent(in: txn)
        let target = max(min(sequence, extent.last), extent.truncatedThrough)
        guard target > extent.truncatedThrough || extent.holdsTruncatedRecords else { return 0 }
        var keys: [[UInt8]] = []
        // What goes is remembered by origin: a change feed's token from another node resumes
        // here only if it covers every dropped entry (`ChangeFeed`).
        var floor = extent.floor
        try txn.scan(.changes, from: []) { key, value in
            guard try decodeSequence(key) <= target else { return .stop }
            keys.append(key)
            for entry in try decode(value, table: .changes, ChangeRecord.decode) {
                floor.advance(origin: entry.origin, to: entry.originSequence)
            }
            return keys.count < limit ? .next : .stop
        }
        guard let lastKey = keys.last else { return 0 }
        for key in keys { try txn.delete(.changes, key) }
        if floor != extent.floor { try txn.put(.meta, logFloorMetaKey, ProfileFormat.encode(floor), mode: .upsert) }
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

extension WriteContext {
    /// A tree comparison brought this node everything `peer`'s log held through `position`, and
    /// its cursor moves there. Its own log lacks what the comparison brought (those changes are
    /// in no entry here), so a peer reading it from before now could pass over them: the log is
    /// marked truncated through its last entry, and such a peer is brought up to date by a
    /// comparison instead. The records stay until truncation drops them.
    func resumeLog(from peer: UInt64, at position: UInt64) throws {
        try setCursor(position, of: peer)
        let extent = try engine.logExtent(in: txn)
        let through = max(extent.truncatedThrough, extent.last)  // nothing is logged in this transaction
        try txn.put(.meta, logTruncatedMetaKey, sequenceKey(through), mode: .upsert)
        try txn.put(.meta, logRebuiltMetaKey, sequenceKey(through), mode: .upsert)
    }
}
