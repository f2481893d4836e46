import KithCRDT
import KithProfile
import Synchronization

/// Where profiles live, by role: what request handlers read, what the one writer writes, and
/// what replication reads and writes. Two implementations share one engine: `LMDBProfileStore`
/// (durable, the default) and `MemoryProfileStore` (embedded, for simulation and tests).
public protocol ProfileStore: ProfileReading, ProfileWriting, ReplicaStore {}

/// Reads of profiles, as request handlers make them: any thread, never waiting for the writer.
public protocol ProfileReading: AnyObject, Sendable {
    /// The profile `identifier` belongs to, or nil if the identifier is unknown.
    func view(of identifier: Identifier) throws -> ProfileView?

    /// The same profile as it is stored, checked but not decoded: what a read renders to JSON
    /// without building the view (`EncodedProfileView`).
    func encodedView(of identifier: Identifier) throws -> EncodedProfileView?

    /// Whether the source document of `subject` holds the message `messageId` (a link record,
    /// all its expiry left, does not count).
    func hasMessage(_ messageId: String, subject: Identifier) throws -> Bool

    /// A page of the events of the profile `identifier` belongs to, newest first, strictly older
    /// than `cursor` (nil: from the newest); `next` is the cursor of the following page.
    func events(of identifier: Identifier, before cursor: EventCursor?, limit: Int) throws -> (events: [EventRecord], next: EventCursor?)

    /// Every consent decision the messages of the profile `identifier` belongs to carried,
    /// oldest first: the customer's consent history.
    func consentHistory(of identifier: Identifier) throws -> [ConsentChange]

    /// When each node last accepted a message about the profile `identifier` belongs to (the
    /// `seen` clause of a scope).
    func seenBy(_ identifier: Identifier) throws -> SeenBy

    /// The cluster settings whose names begin with `prefix` (`StoredSetting`), removed ones too.
    func settings(prefix: String) throws -> [StoredSetting]

    /// The cluster setting named exactly `name`, if any.
    func setting(named name: String) throws -> StoredSetting?

    /// Up to `limit` profiles in canonical-key order, after `canonical` (nil: from the start).
    func profiles(after canonical: Identifier?, limit: Int) throws -> [ProfileView]

    /// The links that touch the members of the profile `identifier` belongs to.
    func links(of identifier: Identifier) throws -> [StoredLink]

    func statistics() throws -> StoreStatistics
}

/// Writes of profiles, made by a node's one writer (`claimWriter`).
public protocol ProfileWriting: AnyObject, Sendable {
    /// Applies a batch of message deltas atomically — all of them or, if anything fails, none —
    /// each with a change-log entry. Returns what happened to each message, in order.
    @discardableResult func apply(_ batch: [ProfileDelta]) throws -> [ApplyOutcome]

    /// `apply`, except that a store opened to defer syncs (`allowsDeferredSync`) may return
    /// before the batch is durable: it is durable once a later write or `synchronize()`
    /// returns. Group commit uses it so that the writer need not wait for the sync that makes a
    /// commit durable (one sync then covers every commit waiting for it). Other stores: `apply`.
    @discardableResult func applyDeferringSync(_ batch: [ProfileDelta]) throws -> [ApplyOutcome]

    /// Makes every commit so far durable (commits whose sync was deferred).
    func synchronize() throws

    /// The caller vouches that this node's log entries through local sequence `sequence`, all
    /// committed, survive any crash without a `synchronize`: its write-ahead log holds what
    /// replays to exactly these entries (docs/storage.md, "The write-ahead log"). Replication may
    /// read them now (`ReplicaStore.durableLogSequence`).
    func logIsDurable(through sequence: UInt64)

    /// The write-ahead log's transaction (docs/storage.md, "The write-ahead log"): applies the
    /// groups `next` hands out, one after another, until it returns nil, then records
    /// `logPosition()` as the last log record applied and commits: durably, unless
    /// `deferringSync` (then as `applyDeferringSync`: durable at the next `synchronize`). After
    /// each group, `applied(index, outcomes, logSequence)` with the local log sequence so far (this node's
    /// own changes through it are in the group's reach). If the transaction runs again (LMDB
    /// grew its map), the groups taken so far are applied again first and reported again; they
    /// come out the same, as applying is deterministic. A group that fails aborts the whole
    /// transaction with its error: the caller knows which group it handed out last.
    func applyGroups(
        deferringSync: Bool, next: () throws -> [ProfileDelta]?,
        applied: (_ index: Int, _ outcomes: [ApplyOutcome], _ logSequence: UInt64) throws -> Void, logPosition: () -> UInt64
    ) throws

    /// The last write-ahead-log record applied here (0: none).
    func writeLogApplied() throws -> UInt64

    /// From now on only the calling thread opens write transactions (a node's one writer);
    /// debug builds stop when another thread tries.
    func claimWriter()

    /// Writes the cluster setting `name` (an empty value removes it) as of `stamp`, logged and
    /// replicated as a change; an older stamp than the one stored changes nothing but is logged.
    func setSetting(_ name: String, _ value: [UInt8], stamp: LWWStamp) throws

    /// Unmerge: removes the link between two identifiers as of `stamp`.
    func removeLink(_ a: Identifier, _ b: Identifier, stamp: LWWStamp) throws

    /// Erases the whole person `identifier` belongs to, accepted at `time` (this node's hybrid
    /// clock, Unix ms). Returns the erased identifiers (only their forget keys remain) and the
    /// boundary: everything about them dated at or before it is gone, here and wherever it arrives.
    @discardableResult func erase(_ identifier: Identifier, requestedAt time: Int64) throws -> Erasure

    /// Drops every document of `identifiers`, every mention of them in other documents and this
    /// node's log entries about them, retiring their data keys and leaving no forget record: a
    /// scoped site purging customers that left its scope. Only once the node's peers hold what
    /// it accepted about them.
    func purge(_ identifiers: [Identifier]) throws

    /// Whether some profiles may have been built under other identity rules than the
    /// configured ones (`IdentityRules.version`).
    func identityRulesNeedWork() throws -> Bool

    /// One step of computing every profile again under the configured identity rules:
    /// `buckets` of the digest tree's 1,024, in one transaction. True once all are done.
    func reevaluateIdentity(buckets: Int) throws -> Bool

    /// One step of the retention sweep: drops what `rules` say has expired at `now` from the
    /// identifiers of the next `buckets` buckets, in one transaction (docs/storage.md, "Retention").
    /// At most `identifiers` identifiers a step, whatever the buckets hold: a large store's
    /// buckets hold many, and a step is one transaction the writer's other jobs wait behind.
    /// For the same reason it deflates at most `blocks` ledger blocks; the identifiers past
    /// that wait for the next pass.
    @discardableResult func expire(under rules: RetentionRules, now: Int64, buckets: Int, identifiers: Int, blocks: Int) throws
        -> RetentionStep
}

/// What replication reads and writes: the change log, version vectors and cursors, entries that
/// travel ahead, and the digest tree of anti-entropy (see `DigestTree`).
public protocol ReplicaStore: AnyObject, Sendable {
    /// Change-log entries after local sequence `sequence`, at most `limit`.
    func changes(after sequence: UInt64, limit: Int) throws -> [ChangeEntry]

    /// Applies changes replicated from `peer` in one transaction, skipping those this replica
    /// already holds (by version vector), and, when `position` is given, records that this node
    /// has now read `peer`'s log through that position. Returns how many changes were new.
    @discardableResult func applyReplicated(_ entries: [ChangeEntry], from peer: UInt64, through position: UInt64?) throws -> Int

    /// Applies pushes from `peer` in one transaction, in order: each only if this replica holds
    /// the peer's changes up to its `previous` (no gap), as the changes before it left them.
    /// Returns how many changes were new, and how many pushes were refused for a gap.
    func applyPushes(_ pushes: [PushedChanges], from peer: UInt64) throws -> (changed: Int, refused: Int)

    /// Entries of this node's log after local sequence `sequence` that travel ahead of a
    /// backlog (erasures, consent decisions), at most `limit`.
    func entriesAhead(after sequence: UInt64, limit: Int) throws -> [ChangeEntry]

    /// Applies the effect of a change ahead of its place in its origin's order (see
    /// `ClusterNode`): no version-vector or log entry until the change arrives in order.
    func applyAhead(_ entry: ChangeEntry) throws

    /// Which changes this replica holds, by origin.
    func versionVector() throws -> VersionVector

    /// How far this node has read `peer`'s change log (0: not at all).
    func cursor(of peer: UInt64) throws -> UInt64

    /// SHA-256 over every replicated row: equal exactly when two replicas hold the same data.
    func contentDigest() throws -> [UInt8]

    /// How much of this node's change log is held: what truncation dropped, and the newest entry.
    func logExtent() throws -> LogExtent

    /// The newest entry of this node's log that is on disk for good. Entries after it were
    /// committed with their sync deferred (`applyDeferringSync`) and an operating-system crash
    /// could still undo them, after which their sequence numbers would go to other changes: no
    /// peer may read them yet (docs/storage.md, "Durability").
    func durableLogSequence() throws -> UInt64

    /// Drops the change log's records through local sequence `sequence`, at most `limit` of them
    /// (and the copies of their entries that travel ahead of a backlog), in one transaction.
    /// Returns how many records went: call again while that is `limit`.
    @discardableResult func truncateLog(through sequence: UInt64, limit: Int) throws -> Int

    /// The forget keys among `forgetKeys` this replica holds an erasure of.
    func erased(among forgetKeys: [[UInt8]]) throws -> Set<[UInt8]>

    /// A tree comparison with `peer` brought this node its log through `position`: the cursor
    /// moves there, and this node's own log is marked truncated through its last entry.
    func resumeLog(from peer: UInt64, at position: UInt64) throws

    /// The digest of a tree node (`DigestTreeShape`) or of one forget key.
    func digest(of node: [UInt8]) throws -> Digest128

    /// The children of a tree node with a non-zero digest: the nodes one level down, or under a
    /// bucket the forget keys held.
    func digestChildren(of node: [UInt8]) throws -> [DigestEntry]

    /// What this replica holds under each forget key (keys it holds nothing of are left out).
    func documentStates(for forgetKeys: [[UInt8]]) throws -> [DocumentState]

    /// Joins a peer's document states in one transaction. Returns how many changed anything here.
    @discardableResult func join(_ states: [DocumentState]) throws -> Int

    /// Site syncs (docs/replication.md, "Scope"). On the core: the component of `identifier` as
    /// a scope decides on it (with `seenBy` only if asked; nil if unknown), the states of
    /// documents by identifier, and a step of a walk over every identifier held.
    func scopeComponent(of identifier: Identifier, withSeenBy: Bool) throws -> Scope.Component?
    func documentStates(of identifiers: [Identifier]) throws -> [DocumentState]
    func identifiers(from position: BucketWalkPosition, buckets: Int, limit: Int) throws -> (identifiers: [Identifier], next: BucketWalkPosition)

    /// On a scoped site: every document held, with the digest of its state; and a core's update
    /// applied (`StoreEngine.joinSiteUpdate`, then `replaceDiffering`, two transactions: nothing
    /// this node's log still holds is dropped).
    func heldDocuments() throws -> [HeldDocument]
    /// A number that moves with every commit that may have changed the store (LMDB's last
    /// transaction id; a count of writes in memory): read before a read of the store, an
    /// unchanged number says nothing changed since (a site reuses its report then).
    func lastCommit() throws -> UInt64
    @discardableResult func applySiteUpdate(components: [[DocumentState]], purge: [Identifier]) throws -> SiteUpdateOutcome

    /// What forget compaction has done here, whom it trusts, and how far this node cleared.
    func forgetCompactionState() throws -> ForgetCompactionState

    /// One step of a pass over the forget set, in one transaction: reads up to `scan` records
    /// from where the last step stopped and drops those dated at or before `horizon` whose
    /// erasures `held` covers, up to `limit`; when any go, `trusted` becomes the set of members
    /// whose data is taken without their clearing first (docs/replication.md, "Compacting
    /// forget entries").
    @discardableResult func compactForgetRecords(horizon: Int64, held: VersionVector, trusted: Set<UInt64>, scan: Int, limit: Int) throws
        -> ForgetCompactionStep

    /// A peer that compacted forget records quarantined this node: one step (one transaction)
    /// of dropping everything dated at or before `floor` — the logged changes first, then up to
    /// `identifiers` identifiers of at most `buckets` digest-tree buckets at a time; the last step
    /// records that it is done. Returns whether it is.
    @discardableResult func clearForQuarantine(through floor: Int64, buckets: Int, identifiers: Int) throws -> Bool
}

extension ProfileWriting {
    /// A retention step of at most `buckets` buckets and 2,000 identifiers.
    @discardableResult public func expire(under rules: RetentionRules, now: Int64, buckets: Int) throws -> RetentionStep {
        try expire(under: rules, now: now, buckets: buckets, identifiers: 2_000)
    }

    /// A retention step deflating at most 1,024 ledger blocks (about 12 ms of deflate).
    @discardableResult public func expire(under rules: RetentionRules, now: Int64, buckets: Int, identifiers: Int) throws -> RetentionStep {
        try expire(under: rules, now: now, buckets: buckets, identifiers: identifiers, blocks: 1_024)
    }
}

/// One push of a peer's own changes: applied only by a replica that holds the peer's changes up
/// to `previous` (`PeerMessage.push`).
public struct PushedChanges: Sendable, Equatable {
    public var previous: UInt64
    public var entries: [ChangeEntry]

    public init(previous: UInt64, entries: [ChangeEntry]) {
        self.previous = previous
        self.entries = entries
    }
}

/// The part both stores share: the engine over a backend's read and write transactions.
package protocol EngineBackedStore: ProfileStore {
    var engine: StoreEngine { get }
    var writerClaim: WriterClaim { get }
    func read<T>(_ body: (any StoreReading) throws -> T) throws -> T
    @discardableResult func write<T>(deferringSync: Bool, _ body: (any StoreWriting) throws -> T) throws -> T
}

extension EngineBackedStore {
    @discardableResult package func write<T>(_ body: (any StoreWriting) throws -> T) throws -> T {
        try write(deferringSync: false, body)
    }

    public func claimWriter() { writerClaim.claim() }

    @discardableResult public func apply(_ batch: [ProfileDelta]) throws -> [ApplyOutcome] {
        try modify { context in try batch.map { try context.apply($0) } }
    }

    @discardableResult public func applyDeferringSync(_ batch: [ProfileDelta]) throws -> [ApplyOutcome] {
        try modify(deferringSync: true) { context in try batch.map { try context.apply($0) } }
    }

    public func applyGroups(
        deferringSync: Bool, next: () throws -> [ProfileDelta]?,
        applied: (_ index: Int, _ outcomes: [ApplyOutcome], _ logSequence: UInt64) throws -> Void, logPosition: () -> UInt64
    ) throws {
        var taken: [[ProfileDelta]] = []
        try modify(deferringSync: deferringSync) { context in
            func apply(_ group: [ProfileDelta], _ index: Int) throws {
                try applied(index, try group.map { try context.apply($0) }, context.logSequence)
            }
            for (index, group) in taken.enumerated() { try apply(group, index) }
            while let group = try next() {
                taken.append(group)
                try apply(group, taken.count - 1)
            }
            try context.txn.put(.meta, writeLogAppliedMetaKey, sequenceKey(logPosition()), mode: .upsert)
        }
    }

    public func writeLogApplied() throws -> UInt64 {
        try read { reader in try reader.get(.meta, writeLogAppliedMetaKey).map { try engine.decodeSequence($0) } ?? 0 }
    }

    public func view(of identifier: Identifier) throws -> ProfileView? {
        try read { reader in try engine.view(of: identifier, in: reader) }
    }

    public func encodedView(of identifier: Identifier) throws -> EncodedProfileView? {
        try read { reader in try engine.encodedView(of: identifier, in: reader) }
    }

    public func removeLink(_ a: Identifier, _ b: Identifier, stamp: LWWStamp) throws {
        try modify { context in try context.removeLink(a, b, stamp: stamp) }
    }

    public func setSetting(_ name: String, _ value: [UInt8], stamp: LWWStamp) throws {
        try modify { context in try context.setSetting(name, value, stamp: stamp, origin: nil) }
    }

    public func settings(prefix: String) throws -> [StoredSetting] {
        try read { reader in try engine.settings(prefix: prefix, in: reader) }
    }

    public func setting(named name: String) throws -> StoredSetting? {
        try read { reader in try engine.setting(named: name, in: reader) }
    }

    public func erase(_ identifier: Identifier, requestedAt time: Int64) throws -> Erasure {
        try modify { context in try context.erase(identifier, requestedAt: time) }
    }

    public func purge(_ identifiers: [Identifier]) throws {
        try modify { context in try context.purge(identifiers) }
    }

    public func identityRulesNeedWork() throws -> Bool {
        try read { reader in try engine.identityRulesNeedWork(in: reader) }
    }

    public func reevaluateIdentity(buckets: Int) throws -> Bool {
        try modify { context in try engine.reevaluateIdentity(buckets: buckets, in: context) }
    }

    public func expire(under rules: RetentionRules, now: Int64, buckets: Int, identifiers: Int, blocks: Int) throws -> RetentionStep {
        try modify { context in
            try engine.expire(under: rules, now: now, buckets: buckets, identifiers: identifiers, blocks: blocks, in: context)
        }
    }

    public func hasMessage(_ messageId: String, subject: Identifier) throws -> Bool {
        try read { reader in
            guard let row = try reader.get(.documents, documentKey(subject.key, .ledger, messageId.utf8)) else { return false }
            return try !decode(LedgerRow.self, row, table: .documents).isLinkRecord
        }
    }

    public func events(of identifier: Identifier, before cursor: EventCursor?, limit: Int) throws
        -> (events: [EventRecord], next: EventCursor?)
    {
        try read { reader in try engine.events(of: identifier, before: cursor, limit: limit, in: reader) }
    }

    public func consentHistory(of identifier: Identifier) throws -> [ConsentChange] {
        try read { reader in try engine.consentHistory(of: identifier, in: reader) }
    }

    public func seenBy(_ identifier: Identifier) throws -> SeenBy {
        try read { reader in try engine.seenBy(identifier, in: reader) }
    }

    public func profiles(after canonical: Identifier?, limit: Int) throws -> [ProfileView] {
        try read { reader in try engine.profiles(after: canonical, limit: limit, in: reader) }
    }

    public func links(of identifier: Identifier) throws -> [StoredLink] {
        try read { reader in try engine.links(of: identifier, in: reader) }
    }

    public func changes(after sequence: UInt64, limit: Int) throws -> [ChangeEntry] {
        try read { reader in try engine.changes(after: sequence, limit: limit, in: reader) }
    }

    @discardableResult public func applyReplicated(_ entries: [ChangeEntry], from peer: UInt64, through position: UInt64?) throws -> Int {
        try modify { context in
            var applied = 0
            for entry in entries where try context.applyReplicated(entry) { applied += 1 }
            if let position { try context.setCursor(position, of: peer) }
            return applied
        }
    }

    public func applyPushes(_ pushes: [PushedChanges], from peer: UInt64) throws -> (changed: Int, refused: Int) {
        try modify { context in
            var changed = 0
            var refused = 0
            for push in pushes {
                let held = try context.versions ?? engine.versionVector(in: context.txn)
                guard held[peer] >= push.previous else {
                    refused += 1
                    continue
                }
                for entry in push.entries where try context.applyReplicated(entry) { changed += 1 }
            }
            return (changed, refused)
        }
    }

    /// A read of what only a replicating store keeps (`StoreConfiguration.replicates`).
    private func readReplicationState<T>(_ body: (any StoreReading) throws -> T) throws -> T {
        guard engine.configuration.replicates else { throw ReplicationStateNotKept() }
        return try read(body)
    }

    public func entriesAhead(after sequence: UInt64, limit: Int) throws -> [ChangeEntry] {
        try readReplicationState { reader in try engine.entriesAhead(after: sequence, limit: limit, in: reader) }
    }

    public func applyAhead(_ entry: ChangeEntry) throws {
        try modify { context in try context.applyAhead(entry) }
    }

    public func versionVector() throws -> VersionVector {
        try read { reader in try engine.versionVector(in: reader) }
    }

    public func cursor(of peer: UInt64) throws -> UInt64 {
        try read { reader in try engine.cursor(of: peer, in: reader) }
    }

    public func contentDigest() throws -> [UInt8] {
        try read { reader in try engine.contentDigest(in: reader) }
    }

    public func statistics() throws -> StoreStatistics {
        try read { reader in try engine.statistics(in: reader) }
    }

    public func digest(of node: [UInt8]) throws -> Digest128 {
        try readReplicationState { reader in try engine.digest(of: node, in: reader) }
    }

    public func digestChildren(of node: [UInt8]) throws -> [DigestEntry] {
        try readReplicationState { reader in try engine.digestChildren(of: node, in: reader) }
    }

    public func documentStates(for forgetKeys: [[UInt8]]) throws -> [DocumentState] {
        try read { reader in try engine.documentStates(for: forgetKeys, in: reader) }
    }

    public func join(_ states: [DocumentState]) throws -> Int {
        try modify { context in try states.reduce(0) { count, state in try context.join(state) ? count + 1 : count } }
    }

    public func scopeComponent(of identifier: Identifier, withSeenBy: Bool) throws -> Scope.Component? {
        try read { reader in try engine.scopeComponent(of: identifier, withSeenBy: withSeenBy, in: reader) }
    }

    public func documentStates(of identifiers: [Identifier]) throws -> [DocumentState] {
        try read { reader in try engine.documentStates(of: identifiers, in: reader) }
    }

    public func identifiers(from position: BucketWalkPosition, buckets: Int, limit: Int) throws
        -> (identifiers: [Identifier], next: BucketWalkPosition)
    {
        try read { reader in try engine.walkStep(from: position, buckets: buckets, limit: limit, in: reader) }
    }

    public func heldDocuments() throws -> [HeldDocument] {
        try read { reader in try engine.heldDocuments(in: reader) }
    }

    public func applySiteUpdate(components: [[DocumentState]], purge: [Identifier]) throws -> SiteUpdateOutcome {
        var outcome = try modify { context in try engine.joinSiteUpdate(components: components, purge: purge, in: context) }
        // Apart: the join's rows must be written before they are compared with what was sent.
        outcome.replaced = try modify { context in try engine.replaceDiffering(components: components, in: context) }
        return outcome
    }

    public func logExtent() throws -> LogExtent {
        try read { reader in try engine.logExtent(in: reader) }
    }

    /// A store that holds nothing on disk, or syncs every commit: its whole log.
    public func durableLogSequence() throws -> UInt64 {
        try read { reader in try engine.lastSequence(in: reader) }
    }

    @discardableResult public func truncateLog(through sequence: UInt64, limit: Int) throws -> Int {
        precondition(limit > 0, "a truncation must be allowed to drop at least one record (limit \(limit))")
        return try write { txn in try engine.truncateLog(through: sequence, limit: limit, in: txn) }
    }

    public func forgetCompactionState() throws -> ForgetCompactionState {
        try read { reader in try engine.forgetCompactionState(in: reader) }
    }

    @discardableResult public func compactForgetRecords(horizon: Int64, held: VersionVector, trusted: Set<UInt64>, scan: Int, limit: Int)
        throws -> ForgetCompactionStep
    {
        try modify { context in try context.compactForgetRecords(horizon: horizon, held: held, trusted: trusted, scan: scan, limit: limit) }
    }

    @discardableResult public func clearForQuarantine(through floor: Int64, buckets: Int, identifiers: Int) throws -> Bool {
        try modify { context in try context.clearForQuarantine(through: floor, buckets: buckets, identifiers: identifiers) }
    }

    public func resumeLog(from peer: UInt64, at position: UInt64) throws {
        try modify { context in try context.resumeLog(from: peer, at: position) }
    }

    public func erased(among forgetKeys: [[UInt8]]) throws -> Set<[UInt8]> {
        try read { reader in Set(try forgetKeys.filter { try reader.get(.forget, $0) != nil }) }
    }

    /// The leaf digests computed from the rows, for checking the stored tree.
    func recomputedDigests() throws -> [[UInt8]: Digest128] {
        try read { reader in try engine.recomputedDigests(in: reader) }
    }

    /// The stored tree's nodes, and the nodes as they must be, summed from the rows.
    func treeNodes() throws -> (stored: [[UInt8]: Digest128], expected: [[UInt8]: Digest128]) {
        try read { reader in (try engine.storedNodes(in: reader), StoreEngine.nodes(over: try engine.recomputedDigests(in: reader))) }
    }

    private func modify<T>(deferringSync: Bool = false, _ body: (WriteContext) throws -> T) throws -> T {
        try write(deferringSync: deferringSync) { txn in
            let context = try WriteContext(engine: engine, txn: txn)
            let result = try body(context)
            try context.finish()
            return result
        }
    }
}

/// The embedded store: sorted in-memory tables behind a lock, atomic batches by undo log.
public final class MemoryProfileStore: EngineBackedStore {
    package let engine: StoreEngine
    package let writerClaim = WriterClaim()
    private let storage: Mutex<MemoryTables>

    /// `byteLimit` bounds keys and values held; a batch that would pass it fails whole.
    public init(configuration: StoreConfiguration, byteLimit: Int = Int.max) {
        engine = StoreEngine(configuration: configuration)
        storage = Mutex(MemoryTables(byteLimit: byteLimit))
    }

    /// A store holding a copy of `other`'s tables under `configuration`: the same data opened
    /// with other settings, as a durable store is after a restart (tests, the simulation).
    public init(configuration: StoreConfiguration, copying other: MemoryProfileStore) {
        engine = StoreEngine(configuration: configuration)
        storage = Mutex(other.storage.withLock { $0 })
    }

    package func read<T>(_ body: (any StoreReading) throws -> T) throws -> T {
        try storage.withLock { tables in try body(LedgerBlockReading(base: MemoryReading(storage: tables))) }
    }

    /// What a disk would hold while commits with a deferred sync wait for `synchronize`: the
    /// tables as they were before the first of them, and the last log entry then. Memory holds
    /// nothing durable; this plays a durable store's sync and an operating-system crash
    /// (`loseUnsyncedCommits`), so that the simulation judges what replicates only durable entries.
    private let lastSynced = Mutex<(tables: [MemoryTables.SortedTable], bytes: Int, sequence: UInt64)?>(nil)

    public func synchronize() { lastSynced.withLock { $0 = nil } }

    /// Memory keeps no write-ahead log to vouch for entries: they are made durable outright.
    public func logIsDurable(through sequence: UInt64) { synchronize() }

    public func durableLogSequence() throws -> UInt64 {
        if let durable = lastSynced.withLock({ $0?.sequence }) { return durable }
        return try read { reader in try engine.lastSequence(in: reader) }
    }

    /// An operating-system crash: the commits whose sync was deferred and has not happened are
    /// gone, as LMDB's would be with their metadata page unsynced.
    public func loseUnsyncedCommits() {
        guard
            let synced = lastSynced.withLock({ state in
                defer { state = nil }; return state
            })
        else { return }
        commits.withLock { $0 += 1 }
        storage.withLock { tables in
            tables.tables = synced.tables
            tables.bytes = synced.bytes
        }
    }

    /// Writes begun, and the restores of `loseUnsyncedCommits` (`lastCommit`).
    private let commits = Mutex<UInt64>(0)

    public func lastCommit() throws -> UInt64 { commits.withLock { $0 } }

    package func write<T>(deferringSync: Bool, _ body: (any StoreWriting) throws -> T) throws -> T {
        writerClaim.check()
        // Counted before the write: a reader that reads the count, then the tables, sees either
        // an older count or the write's result with the new one.
        commits.withLock { $0 += 1 }
        return try storage.withLock { tables in
            let writer = MemoryWriting(storage: tables)
            // The disk's state is taken before the first deferred commit only: holding the
            // tables again would make every later commit copy what it changes.
            let before =
                deferringSync && lastSynced.withLock({ $0 == nil }) ? (tables.tables, tables.bytes, try engine.lastSequence(in: writer)) : nil
            do {
                let result = try body(LedgerBlockWriting(base: writer))
                // A synced commit makes every commit before it durable too.
                lastSynced.withLock { synced in synced = deferringSync ? synced ?? before : nil }
                return result
            } catch {
                writer.rollBack()
                throw error
            }
        }
    }
}
