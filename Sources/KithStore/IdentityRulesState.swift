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

    var rulesVersion: Int64 { Int64(configuration.profile.rules.version) }

    /// Whether some profiles may have been built under other rules than the configured ones.
    package func identityRulesNeedWork(in reader: some StoreReading) throws -> Bool {
        let stored = try reader.get(.meta, Self.identityRulesMetaKey).map { try Self.decodeVersion($0) } ?? 0
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
        if let progress = try txn.get(.meta, Self.identityRulesProgressMetaKey), progress.count == 10,
            try Self.decodeVersion(Array(progress.prefix(8))) == rulesVersion
        {
            next = Int(progress[8]) << 8 | Int(progress[9])
        }
        let end = min(next + buckets, DigestTreeShape.bucketCount)
        try context.reevaluateIdentity(buckets: next..<end)
        guard end == DigestTreeShape.bucketCount else {
            try txn.put(
                .meta, Self.identityRulesProgressMetaKey, Self.encodeVersion(rulesVersion) + [UInt8(end >> 8), UInt8(end & 0xFF)], mode: .upsert)
            return false
        }
        try txn.delete(.meta, Self.identityRulesProgressMetaKey)
        try txn.put(.meta, Self.identityRulesMetaKey, Self.encodeVersion(rulesVersion), mode: .upsert)
        return true
    }

    static func encodeVersion(_ version: Int64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: version >> (56 - 8 * $0)) } }

    static func decodeVersion(_ bytes: [UInt8]) throws -> Int64 {
        guard bytes.count == 8 else {
            throw StoreCorruption(table: "meta", underlying: BinaryDecodingError(.invalidValue, offset: 0, "rules version"))
        }
        return bytes.reduce(0) { $0 << 8 | Int64($1) }
    }
}
