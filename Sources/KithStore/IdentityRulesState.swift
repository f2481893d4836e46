import KithCRDT
import KithProfile

/// Which identity rules a store's profiles were built under (`IdentityRules.version`). Profiles
/// are derived from links and rules; a store opened under other rules computes every component
/// again, a batch of digest-tree buckets per transaction, and marks the version once it has: no
/// coordinator, and every replica with the same links and rules ends with the same profiles.
extension StoreEngine {
    /// `identity-rules` → the version every profile was built under (absent: 0, the built-in rules).
    static let identityRulesMetaKey = Array("identity-rules".utf8)
    /// `identity-rules-next` → the version being brought in, and the next bucket to compute.
    static let identityRulesProgressMetaKey = Array("identity-rules-next".utf8)

    /// The configured version, stored big-endian as sequence numbers are.
    var rulesVersion: UInt64 { UInt64(bitPattern: Int64(configuration.profile.rules.version)) }

    /// Whether some profiles may have been built under other rules than the configured ones.
    package func identityRulesNeedWork(in reader: some StoreReading) throws -> Bool {
        let stored = try reader.get(.meta, Self.identityRulesMetaKey).map { try decodeSequence($0) } ?? 0
        return stored != rulesVersion
    }

    /// One step of bringing the profiles under the configured rules: computes the components of
    /// the next `buckets` buckets in `context`'s transaction. Returns true once every profile is
    /// under them (and says so in `meta`).
    func reevaluateIdentity(buckets: Int, in context: WriteContext) throws -> Bool {
        precondition(buckets > 0, "a step of re-evaluation covers at least one bucket, not \(buckets)")
        let txn = context.txn
        guard try identityRulesNeedWork(in: txn) else { return true }
        var next = 0
        if let progress = try txn.get(.meta, Self.identityRulesProgressMetaKey), progress.count == 16,
            try decodeSequence(Array(progress.prefix(8))) == rulesVersion
        {
            next = Int(min(try decodeSequence(Array(progress.suffix(8))), UInt64(DigestTreeShape.bucketCount)))
        }
        let end = min(next + buckets, DigestTreeShape.bucketCount)
        try context.reevaluateIdentity(buckets: next..<end)
        guard end == DigestTreeShape.bucketCount else {
            try txn.put(.meta, Self.identityRulesProgressMetaKey, sequenceKey(rulesVersion) + sequenceKey(UInt64(end)), mode: .upsert)
            return false
        }
        try txn.delete(.meta, Self.identityRulesProgressMetaKey)
        try txn.put(.meta, Self.identityRulesMetaKey, sequenceKey(rulesVersion), mode: .upsert)
        return true
    }
}
