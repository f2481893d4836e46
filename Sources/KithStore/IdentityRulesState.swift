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
        guard try identityRulesNeedWork(in: context.txn) else { return true }
        let ended = try bucketStep(Self.identityRulesProgressMetaKey, of: sequenceKey(rulesVersion), buckets: buckets, in: context.txn) {
            try context.reevaluateIdentity(buckets: $0)
        }
        guard ended else { return false }
        try context.txn.put(.meta, Self.identityRulesMetaKey, sequenceKey(rulesVersion), mode: .upsert)
        return true
    }

    /// One step of work that goes over the digest tree's buckets a few at a time, one
    /// transaction each, resuming where the last step ended: `progressKey` in `meta` holds `pass`
    /// (what the work is for; progress of another pass starts over) and the next bucket. Runs
    /// `body` over this step's buckets, then records the next bucket, or removes the key when the
    /// pass has covered every bucket. Returns whether it has.
    func bucketStep(
        _ progressKey: [UInt8], of pass: [UInt8], buckets: Int, in txn: any StoreWriting, _ body: (Range<Int>) throws -> Void
    ) throws -> Bool {
        precondition(buckets > 0, "a step covers at least one bucket, not \(buckets)")
        var next = 0
        if let progress = try txn.get(.meta, progressKey), progress.count == pass.count + 8, progress.starts(with: pass) {
            next = Int(min(try decodeSequence(Array(progress.suffix(8))), UInt64(DigestTreeShape.bucketCount)))
        }
        let end = min(next + buckets, DigestTreeShape.bucketCount)
        try body(next..<end)
        guard end == DigestTreeShape.bucketCount else {
            try txn.put(.meta, progressKey, pass + sequenceKey(UInt64(end)), mode: .upsert)
            return false
        }
        try txn.delete(.meta, progressKey)
        return true
    }
}
