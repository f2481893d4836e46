import KithCRDT
import KithProfile

/// What one step of a retention sweep did.
public struct RetentionStep: Sendable, Equatable {
    /// Identifiers looked at, events (ledger rows) and traits dropped.
    public var identifiers = 0
    public var eventsDropped = 0
    public var traitsDropped = 0
    /// Consent grants that lapsed (a grant kept past its rule reads as never given).
    public var grantsDropped = 0
    /// This step ended a pass over every bucket (the next step starts another).
    public var passEnded = false

    public init() {}
}

/// Retention: the store drops what the policy's retention rules say has expired at a time it is
/// given (`RetentionRules`, pure), a few digest-tree buckets per transaction, going round every
/// bucket in turn. Nothing is logged: every replica sweeps its own data under the same rules,
/// and expiry only grows with time, so replicas end holding the same rows.
extension StoreEngine {
    /// `retention-next` → the next bucket the sweep looks at (absent: the first).
    static let retentionProgressMetaKey = Array("retention-next".utf8)

    func expire(under rules: RetentionRules, now: Int64, buckets: Int, in context: WriteContext) throws -> RetentionStep {
        var step = RetentionStep()
        step.passEnded = try bucketStep(Self.retentionProgressMetaKey, of: [], buckets: buckets, in: context.txn) { range in
            if !rules.isEmpty { step = try context.expire(buckets: range, under: rules, now: now) }
        }
        return step
    }
}

extension WriteContext {
    /// Drops the expired events (ledger rows) and traits of every identifier in `buckets`,
    /// recounts their heads, and rebuilds the profiles around them from what is left. An
    /// identifier left with nothing (no data, no link) leaves its profile, as after an erasure.
    func expire(buckets: Range<Int>, under rules: RetentionRules, now: Int64) throws -> RetentionStep {
        var step = RetentionStep()
        var changed: [Identifier] = []
        for identifier in try txn.identifiers(inBuckets: buckets, hasher: engine.hasher) {
            step.identifiers += 1
            var expired: [[UInt8]] = []
            var trimmed: [([UInt8], LedgerRow)] = []
            try txn.scan(.documents, prefix: documentKey(identifier.key, .ledger)) { key, value in
                var row = try decode(LedgerRow.self, value, table: .documents)
                guard row.entry.type.isEvent else { return .next }
                if rules.isExpired(event: row.entry.name, at: row.entry.time, now: now) {
                    expired.append(key)
                } else if row.otherCopyTimes.contains(where: { rules.isExpired(event: row.entry.name, at: $0, now: now) }) {
                    // Copies of the message dated earlier go too: a replica that swept the first
                    // copy before the next arrived holds the same row as one that saw both.
                    row.otherCopyTimes.removeAll { rules.isExpired(event: row.entry.name, at: $0, now: now) }
                    trimmed.append((key, row))
                }
                return .next
            }
            for key in expired { try txn.delete(.documents, key) }
            for (key, row) in trimmed { try txn.put(.documents, key, ProfileFormat.encode(row), mode: .upsert) }
            step.eventsDropped += expired.count
            var head = try source(identifier.key) ?? SourceHead()
            let traits = head.traits.count
            head.traits.retain { name, register in !rules.isExpired(trait: name, updatedAt: register.stamp.time, now: now) }
            step.traitsDropped += traits - head.traits.count
            let decisions = head.consent.count
            head.consent.retain { name, register in !rules.isExpired(grant: register, name: name, now: now) }
            step.grantsDropped += decisions - head.consent.count
            guard !expired.isEmpty || !trimmed.isEmpty || head.traits.count != traits || head.consent.count != decisions else { continue }
            try recount(&head, of: identifier)
            if head.isEmpty { deleteSource(identifier.key) } else { setSource(identifier.key, head) }
            changed.append(identifier)
        }
        try rebuildProfiles(around: changed)
        return step
    }
}
