import KithCRDT
import KithProfile

/// What one step of a retention sweep did.
public struct RetentionStep: Sendable, Equatable {
    /// Identifiers looked at, events (ledger rows) and traits dropped.
    public var identifiers = 0
    public var eventsDropped = 0
    public var traitsDropped = 0
    /// Records of identify, group and alias messages dropped (`messages` rules).
    public var messagesDropped = 0
    /// Consent grants that lapsed (a grant kept past its rule reads as never given).
    public var grantsDropped = 0
    /// Ledger blocks deflated: those ingest left plain (`LedgerBlock.isDeflatedBySweep`).
    public var blocksDeflated = 0
    /// Identifier rows deflated (sealed stores: `StoreWriting.deflateIdentifierRow`).
    public var rowsDeflated = 0
    /// Rows written again in their stored order to fill their pages (sealed stores:
    /// `StoreWriting.repack`).
    public var rowsRepacked = 0
    /// This step ended a pass over every bucket (the next step starts another).
    public var passEnded = false

    public init() {}
}

/// Retention: the store drops what the policy's retention rules say has expired at a time it is
/// given (`RetentionRules`, pure), a few digest-tree buckets per transaction, going round every
/// bucket in turn. Nothing is logged: every replica sweeps its own data under the same rules,
/// and expiry only grows with time, so replicas end holding the same rows. The same walk, rules
/// or none, deflates the ledger blocks and identifier rows ingest left plain, and, on the first
/// pass of each repack period, writes the stored rows of the buckets it has walked again in
/// order (the rows stay the same).
extension StoreEngine {
    /// `retention-walk` → where the sweep goes on (`BucketWalkPosition.stored`; absent: the
    /// first bucket).
    static let retentionWalkMetaKey = Array("retention-walk".utf8)
    /// `retention-next` → where the sweep went on in stores written before walks went in
    /// forget-key order: a bucket (8 bytes), then the identifier key of the last one done in
    /// it. Read once, for its bucket, which is walked again from its start.
    static let legacyRetentionProgressMetaKey = Array("retention-next".utf8)
    /// `repack-next` → the stored key from which the next step's repacking goes on (absent:
    /// the table's start). Node-local, as is how rows are stored.
    static let repackProgressMetaKey = Array("repack-next".utf8)
    /// `repack-last` → when the last pass that repacked started (`RepackSchedule`).
    static let lastRepackMetaKey = Array("repack-last".utf8)
    /// `repack-pass` → present while the pass under way repacks.
    static let repackingPassMetaKey = Array("repack-pass".utf8)
    /// Rows one step writes again at most (a few megabytes): a step stays a short transaction.
    static let repackRowLimit = 8_192

    /// One step: from where the last one stopped, the identifiers of up to `buckets` buckets in
    /// forget-key order, at most `identifiers` of them (`walkStep`), and at most
    /// `blocks` of their ledger blocks and identifier rows deflated.
    func expire(
        under rules: RetentionRules, now: Int64, buckets: Int, identifiers limit: Int, blocks: Int, in context: WriteContext
    ) throws -> RetentionStep {
        let txn = context.txn
        var position = BucketWalkPosition.start
        if let stored = try txn.get(.meta, Self.retentionWalkMetaKey) {
            position = try decode(stored, table: .meta) { try BucketWalkPosition(stored: $0) }
        } else if let legacy = try txn.get(.meta, Self.legacyRetentionProgressMetaKey), legacy.count >= 8 {
            // A sweep in an older order: its bucket again from the start (a sweep repeated on
            // an identifier changes nothing; one skipped would keep expired data a pass longer).
            position.bucket = Int(min(try decodeSequence(Array(legacy.prefix(8))), UInt64(DigestTreeShape.bucketCount)))
            try txn.delete(.meta, Self.legacyRetentionProgressMetaKey)
        } else {
            // A pass starts: whether it repacks is the schedule's to say, and stays so to its end.
            let last = try txn.get(.meta, Self.lastRepackMetaKey).map { bytes in
                try decode(bytes, table: .meta) { try ProfileFormat.decode(SignedTime.self, from: $0).value }
            }
            if RepackSchedule(periodMillis: configuration.repackPeriodMillis).repacks(passStartingAt: now, lastRepackedAt: last) {
                try txn.put(.meta, Self.lastRepackMetaKey, ProfileFormat.encode(SignedTime(value: now)), mode: .upsert)
                try txn.put(.meta, Self.repackingPassMetaKey, [1], mode: .upsert)
            } else {
                try txn.delete(.meta, Self.repackingPassMetaKey)
            }
        }
        let repacking = try txn.get(.meta, Self.repackingPassMetaKey) != nil
        let (taken, next) = try walkStep(from: position, buckets: buckets, limit: limit, in: txn)
        var step = RetentionStep()
        if !rules.isEmpty {
            step.add(try context.expire(taken, under: rules, now: now))
        } else {
            step.identifiers += taken.count
        }
        // The same walk stores in fewer bytes what ingest left plain; with or without rules.
        // Blocks and identifier rows count alike against the step's bound.
        for identifier in taken where step.blocksDeflated + step.rowsDeflated < blocks {
            step.blocksDeflated += try txn.deflateLedgerBlocks(of: identifier.key, atMost: blocks - step.blocksDeflated - step.rowsDeflated)
            if step.blocksDeflated + step.rowsDeflated < blocks, try txn.deflateIdentifierRow(of: identifier.key) { step.rowsDeflated += 1 }
        }
        // On a repacking pass, the stored rows of the buckets walked so far, written again in
        // their order to fill their pages (the walk shrank values in place; ingest inserts in
        // random key order), at most `repackRowLimit` a step: a store whose buckets hold more
        // catches up later.
        if repacking {
            let repackFrom = try txn.get(.meta, Self.repackProgressMetaKey) ?? []
            let repacked = try txn.repack(from: repackFrom, beforeBucket: next.bucket, atMost: Self.repackRowLimit)
            step.rowsRepacked = repacked.rows
            if let repackNext = repacked.next {
                try txn.put(.meta, Self.repackProgressMetaKey, repackNext, mode: .upsert)
            } else if !repackFrom.isEmpty {
                try txn.delete(.meta, Self.repackProgressMetaKey)
            }
        }
        guard next.isAtEnd else {
            try txn.put(.meta, Self.retentionWalkMetaKey, next.stored, mode: .upsert)
            return step
        }
        try txn.delete(.meta, Self.retentionWalkMetaKey)
        if repacking { try txn.delete(.meta, Self.repackingPassMetaKey) }
        step.passEnded = true
        return step
    }
}

extension RetentionStep {
    /// Counts `other`'s work in with this one's (a pass is the sum of its steps).
    public mutating func add(_ other: RetentionStep) {
        identifiers += other.identifiers
        eventsDropped += other.eventsDropped
        traitsDropped += other.traitsDropped
        messagesDropped += other.messagesDropped
        grantsDropped += other.grantsDropped
        blocksDeflated += other.blocksDeflated
        rowsDeflated += other.rowsDeflated
        rowsRepacked += other.rowsRepacked
    }
}

extension WriteContext {
    /// Drops the expired events and message records (ledger rows; a row that linked others
    /// leaves its link record), traits and consent grants of `identifiers`,
    /// recounts their heads, and rebuilds the profiles around them from what is left. An
    /// identifier left with nothing (no data, no link) leaves its profile, as after an erasure.
    func expire(_ identifiers: [Identifier], under rules: RetentionRules, now: Int64) throws -> RetentionStep {
        var step = RetentionStep()
        var changed: [Identifier] = []
        for identifier in identifiers {
            step.identifiers += 1
            var expired: [[UInt8]] = []
            var trimmed: [([UInt8], LedgerRow)] = []
            try txn.scan(.documents, prefix: documentKey(identifier.key, .ledger)) { key, value in
                let row = try decode(LedgerRow.self, value, table: .documents)
                guard let keep = rules.keep(forMessage: row.entry) else { return .next }
                switch row.swept(expiring: { keep.expiry(from: $0) <= now }) {
                case .keep: break
                case .trim(let kept): trimmed.append((key, kept))
                case .expire(let record):
                    if row.entry.type.isEvent { step.eventsDropped += 1 } else { step.messagesDropped += 1 }
                    if let record { trimmed.append((key, record)) } else { expired.append(key) }
                }
                return .next
            }
            try txn.write(.documents, expired.map { ($0, nil) } + trimmed.map { ($0.0, ProfileFormat.encode($0.1)) })
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

/// When the retention sweep writes the stored rows again in their order (`StoreWriting.repack`):
/// on the first pass that starts in each period of `periodMillis`, counted from the Unix epoch
/// (UTC days by default). A repack writes about the whole table; passes run hourly, while pages
/// empty and split at the pace of ingest, so once a day keeps the file near the tables for a
/// day's pages written (docs/storage.md, "Retention and file size") at a twenty-fourth of the
/// writes. A clock set back repacks again at its next pass (a period other than the last).
public struct RepackSchedule: Sendable, Equatable {
    public static let day: Int64 = 86_400_000
    public var periodMillis: Int64

    public init(periodMillis: Int64) {
        precondition(periodMillis > 0, "a repack period of \(periodMillis) ms")
        self.periodMillis = periodMillis
    }

    /// Whether a pass starting at `now` repacks, the last that did having started at `last`.
    public func repacks(passStartingAt now: Int64, lastRepackedAt last: Int64?) -> Bool {
        guard let last else { return true }
        return period(of: now) != period(of: last)
    }

    private func period(of time: Int64) -> Int64 {
        time >= 0 ? time / periodMillis : (time + 1) / periodMillis - 1
    }
}
