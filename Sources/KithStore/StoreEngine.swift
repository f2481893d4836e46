import KithCRDT
import KithCrypto
import KithProfile

/// The store's logic, written once over `StoreReading`/`StoreWriting`, so the LMDB store and the
/// in-memory store behave identically (one contract test suite runs against both).
struct StoreEngine: Sendable {
    let configuration: StoreConfiguration
    let hasher: HMACForgetKeyHasher

    init(configuration: StoreConfiguration) {
        self.configuration = configuration
        hasher = HMACForgetKeyHasher(secret: configuration.forgetKeySecret)
    }

    /// The profile of `identifier`. Only a profile's canonical identifier holds a view row, so
    /// a read by the canonical identifier (the usual read, by user id) is one point read; a read
    /// by another identifier follows its index entry to the canonical one. No other row of the
    /// identifier is read — in a sealed store each row read is a decryption.
    func view(of identifier: Identifier, in reader: some StoreReading) throws -> ProfileView? {
        try viewRow(of: identifier, in: reader).map { try decode(ProfileView.self, $0, table: .documents) }
    }

    /// The same row checked but not decoded: what a read renders to JSON.
    func encodedView(of identifier: Identifier, in reader: some StoreReading) throws -> EncodedProfileView? {
        try viewRow(of: identifier, in: reader).map { try decode($0, table: .documents, EncodedProfileView.init) }
    }

    private func viewRow(of identifier: Identifier, in reader: some StoreReading) throws -> [UInt8]? {
        if let bytes = try reader.get(.documents, documentKey(identifier, .view)) { return bytes }
        guard let canonical = try reader.get(.documents, documentKey(identifier, .index)), canonical != identifier.key else { return nil }
        return try reader.get(.documents, documentKey(canonical, .view))
    }

    func statistics(in reader: some StoreReading) throws -> StoreStatistics {
        let sequence = try reader.get(.meta, sequenceMetaKey).map { try decodeSequence($0) } ?? 0
        // Counted by a scan of the documents table: linear in its size (fine for tests and
        // benchmarks; the node's status endpoint will keep counters).
        var parts: [DocumentPart: Int] = [:]
        try reader.scan(.documents, prefix: []) { key, _ in
            if let separator = key.firstIndex(of: 0), separator + 1 < key.count, let part = DocumentPart(rawValue: key[separator + 1]) {
                parts[part, default: 0] += 1
            }
            return .next
        }
        return StoreStatistics(
            profiles: parts[.view, default: 0], identifiers: parts[.index, default: 0], sources: parts[.head, default: 0],
            ledgerEntries: parts[.ledger, default: 0], links: parts[.edge, default: 0] / 2, changes: try changeCount(in: reader),
            forgotten: try reader.count(.forget), lastSequence: sequence)
    }

    func changes(after sequence: UInt64, limit: Int, in reader: some StoreReading) throws -> [ChangeEntry] {
        var entries: [ChangeEntry] = []
        try reader.scan(.changes, from: sequenceKey(sequence &+ 1)) { _, value in
            for entry in try decode(value, table: .changes, ChangeRecord.decode) where entry.sequence > sequence {
                entries.append(entry)
                if entries.count == limit { return .stop }
            }
            return .next
        }
        return entries
    }

    /// Every consent decision the profile's messages carried, oldest first (linear in the
    /// profile's history, like `events`).
    func consentHistory(of identifier: Identifier, in reader: some StoreReading) throws -> [ConsentChange] {
        guard let view = try view(of: identifier, in: reader) else { return [] }
        var changes: [ConsentChange] = []
        for member in view.members {
            let prefix = documentKey(member.key, .ledger)
            try reader.scan(.documents, prefix: prefix) { key, value in
                let row = try decode(LedgerRow.self, value, table: .documents)
                if !row.consent.isEmpty {
                    changes.append(
                        ConsentChange(
                            identifier: member, messageId: String(decoding: key[prefix.count...], as: UTF8.self), time: row.entry.time,
                            source: row.channel, decisions: row.consent))
                }
                return .next
            }
        }
        return changes.sorted { ($0.time, $0.messageId) < ($1.time, $1.messageId) }
    }

    /// Events of the profile, newest first, older than `cursor`. Reads the members' ledgers:
    /// linear in the profile's history (see docs/storage.md).
    func events(of identifier: Identifier, before cursor: EventCursor?, limit: Int, in reader: some StoreReading) throws
        -> (events: [EventRecord], next: EventCursor?)
    {
        guard let view = try view(of: identifier, in: reader) else { return ([], nil) }
        var events: [EventRecord] = []
        for member in view.members {
            try reader.scan(.documents, prefix: documentKey(member.key, .ledger)) { _, value in
                let row = try decode(LedgerRow.self, value, table: .documents)
                if let event = row.event, cursor.map({ (event.time, event.messageId) < ($0.time, $0.messageId) }) ?? true {
                    events.append(event)
                }
                return .next
            }
        }
        events.sort { ($0.time, $0.messageId) > ($1.time, $1.messageId) }
        let page = Array(events.prefix(limit))
        let next = events.count > limit ? page.last.map { EventCursor(time: $0.time, messageId: $0.messageId) } : nil
        return (page, next)
    }

    /// Profiles in canonical-key order. A full scan of `documents` (views are one part among many).
    func profiles(after canonical: Identifier?, limit: Int, in reader: some StoreReading) throws -> [ProfileView] {
        var views: [ProfileView] = []
        let start = canonical.map { documentKey($0.key, .view) + [0] } ?? []
        try reader.scan(.documents, from: start) { key, value in
            guard let separator = key.firstIndex(of: 0), separator + 1 < key.count,
                key[separator + 1] == DocumentPart.view.rawValue, key.count == separator + 2
            else { return .next }
            views.append(try decode(ProfileView.self, value, table: .documents))
            return views.count < limit ? .next : .stop
        }
        return views
    }

    func links(of identifier: Identifier, in reader: some StoreReading) throws -> [StoredLink] {
        guard let view = try view(of: identifier, in: reader) else { return [] }
        var links: [StoredLink] = []
        for member in view.members {
            let prefix = documentKey(member.key, .edge)
            try reader.scan(.documents, prefix: prefix) { key, value in
                let summary = try decode(EdgeSummary.self, value, table: .documents)
                guard let peer = Identifier(key: key[prefix.count...]), member < peer || !view.members.contains(peer) else { return .next }
                links.append(
                    StoredLink(
                        from: member, to: peer, active: summary.isActive, firstAdd: summary.firstAdd, lastAdd: summary.lastAdd,
                        removedAt: summary.removedAt))
                return .next
            }
        }
        return links
    }

    /// How many entries the change log holds (decodes every record: linear in the log).
    func changeCount(in reader: some StoreReading) throws -> Int {
        var count = 0
        try reader.scan(.changes, prefix: []) { _, value in
            count += try decode(value, table: .changes, ChangeRecord.decode).count
            return .next
        }
        return count
    }

    /// Which changes this replica holds: the stored vector for other origins, and this node's
    /// own origin up to its last sequence (every own change is in its own log).
    func versionVector(in reader: some StoreReading) throws -> VersionVector {
        var vector = try reader.get(.meta, versionVectorKey).map { try decode(VersionVector.self, $0, table: .meta) } ?? VersionVector()
        vector[configuration.node] = try reader.get(.meta, sequenceMetaKey).map { try decodeSequence($0) } ?? 0
        return vector
    }

    func entriesAhead(after sequence: UInt64, limit: Int, in reader: some StoreReading) throws -> [ChangeEntry] {
        var entries: [ChangeEntry] = []
        try reader.scan(.ahead, from: sequenceKey(sequence &+ 1)) { _, value in
            entries.append(try decode(ChangeEntry.self, value, table: .ahead))
            return entries.count < limit ? .next : .stop
        }
        return entries
    }

    func cursor(of peer: UInt64, in reader: some StoreReading) throws -> UInt64 {
        try reader.get(.meta, cursorKey(peer)).map { try decodeSequence($0) } ?? 0
    }

    /// A SHA-256 over every replicated row (documents and forget set, in key order): equal on two
    /// replicas exactly when they hold the same profiles, byte for byte. Node-local tables (the
    /// change log, sequences, cursors) are left out.
    /// Rows in plain key order (a sealed store scans in pseudonym order), so that stores of
    /// either kind holding the same data agree. Holds every row in memory: for tests and checks.
    func contentDigest(in reader: some StoreReading) throws -> [UInt8] {
        var hasher = SHA256Stream()
        for table in [Table.documents, .forget] {
            hasher.update([UInt8(table.rawValue)])
            var rows: [([UInt8], [UInt8])] = []
            try reader.scan(table, prefix: []) { key, value in
                rows.append((key, value))
                return .next
            }
            for (key, value) in rows.sorted(by: { $0.0.lexicographicallyPrecedes($1.0) }) {
                var writer = BinaryWriter(capacity: key.count + value.count + 4)
                writer.write(bytes: key)
                writer.write(bytes: value)
                hasher.update(writer.bytes)
            }
        }
        return hasher.finish()
    }

    func decodeSequence(_ bytes: [UInt8]) throws -> UInt64 {
        var reader = BinaryReader(bytes)
        return try reader.readBigEndianUInt64()
    }
}

func decode<T: BinaryCodable>(_ type: T.Type, _ bytes: [UInt8], table: Table) throws -> T {
    try decode(bytes, table: table) { try ProfileFormat.decode(T.self, from: $0) }
}

func decode<T>(_ bytes: [UInt8], table: Table, _ body: ([UInt8]) throws -> T) throws -> T {
    do { return try body(bytes) } catch { throw StoreCorruption(table: table.name, underlying: error) }
}

/// Records of one part (heads, views) that a transaction reads, changes, and writes back once at
/// the end: a hot customer's head is decoded and encoded once per batch, not once per message.
struct CachedRecords<Value: BinaryCodable> {
    let part: DocumentPart
    private var values: [ByteKey: Value] = [:]
    private var dirty: Set<ByteKey> = []
    private var deleted: Set<ByteKey> = []

    init(part: DocumentPart) {
        self.part = part
    }

    mutating func get(_ key: [UInt8], from txn: any StoreWriting) throws -> Value? {
        let cacheKey = ByteKey(key)
        if let cached = values[cacheKey] { return cached }
        guard let value = try stored(cacheKey, from: txn) else { return nil }
        values[cacheKey] = value
        return value
    }

    /// Changes the record (or `initial`, when there is none) where it is: it leaves the cache
    /// while `body` runs, so the cache's reference does not make every change copy the record's
    /// storage, and goes back, to be written, after. Nil, without calling `body`, when there is
    /// no record and no `initial`. A throw leaves it out of the cache; the transaction, which
    /// aborts on any throw, is not used again.
    mutating func modify<T>(
        _ key: [UInt8], from txn: any StoreWriting, initial: () -> Value? = { nil }, _ body: (inout Value) throws -> T
    ) throws -> T? {
        let cacheKey = ByteKey(key)
        guard var value = try values.removeValue(forKey: cacheKey) ?? stored(cacheKey, from: txn) ?? initial() else { return nil }
        let result = try body(&value)
        set(cacheKey, value)
        return result
    }

    mutating func set(_ key: [UInt8], _ value: Value) { set(ByteKey(key), value) }

    mutating func delete(_ key: [UInt8]) {
        let cacheKey = ByteKey(key)
        values[cacheKey] = nil
        dirty.remove(cacheKey)
        deleted.insert(cacheKey)
    }

    func writeBack(to txn: any StoreWriting) throws {
        for key in dirty { try txn.put(.documents, documentKey(key.bytes, part), ProfileFormat.encode(values[key]!), mode: .upsert) }
        for key in deleted { try txn.delete(.documents, documentKey(key.bytes, part)) }
    }

    private mutating func set(_ key: ByteKey, _ value: Value) {
        values[key] = value
        dirty.insert(key)
        deleted.remove(key)
    }

    /// The record as stored, unless this transaction deleted it.
    private func stored(_ key: ByteKey, from txn: any StoreWriting) throws -> Value? {
        if deleted.contains(key) { return nil }
        guard let bytes = try txn.get(.documents, documentKey(key.bytes, part)) else { return nil }
        return try decode(Value.self, bytes, table: .documents)
    }
}

/// One write transaction's work over the store's tables.
final class WriteContext {
    let engine: StoreEngine
    /// Every write of the transaction goes through it: the digest tree's writer when the store
    /// keeps the tree (so the tree follows every change), else the store's own.
    let txn: any StoreWriting
    /// The digest tree's writer, when the store keeps the tree (`txn` then).
    private let digesting: DigestingWriter?
    private var heads = CachedRecords<SourceHead>(part: .head)
    private var views = CachedRecords<ProfileView>(part: .view)
    private var index: [ByteKey: [UInt8]?] = [:]
    private var sequence: UInt64
    /// Change-log entries of this transaction, written as one record by `finish`.
    private var pendingChanges: [ChangeEntry] = []
    private var anyForgotten: Bool
    /// The version vector, loaded when the transaction first applies a replicated change.
    private var versions: VersionVector?

    private var historyLimit: Int { engine.configuration.profile.historyLimit }

    init(engine: StoreEngine, txn: any StoreWriting) throws {
        self.engine = engine
        if engine.configuration.replicates {
            let digesting = DigestingWriter(base: txn, hasher: engine.hasher)
            self.digesting = digesting
            self.txn = digesting
        } else {
            digesting = nil
            self.txn = txn
        }
        sequence = try txn.get(.meta, sequenceMetaKey).map { try engine.decodeSequence($0) } ?? 0
        anyForgotten = try txn.count(.forget) > 0
        if try txn.get(.meta, formatMetaKey) == nil {
            try txn.put(.meta, formatMetaKey, [ProfileFormat.version], mode: .upsert)
        }
    }

    /// Writes back everything cached. Must be called before the transaction commits.
    func finish() throws {
        try heads.writeBack(to: txn)
        try views.writeBack(to: txn)
        if let last = pendingChanges.last {
            try txn.putChanges(pendingChanges, at: sequenceKey(last.sequence), mode: .append)
        }
        if engine.configuration.replicates { try engine.keepAhead(pendingChanges, in: txn) }
        try txn.put(.meta, sequenceMetaKey, sequenceKey(sequence), mode: .upsert)
        if let versions { try txn.put(.meta, versionVectorKey, ProfileFormat.encode(versions), mode: .upsert) }
        try digesting?.flush()
    }

    // MARK: Messages

    func apply(_ delta: ProfileDelta) throws -> ApplyOutcome {
        try apply(delta, origin: nil)
    }

    /// Applies a message accepted here (`origin` nil) or replicated from `origin`, and logs it
    /// (unless it is applied ahead of its place, `logged` false). A replicated copy is logged
    /// even when this node already held it, so the peers that read only this node's log get it.
    private func apply(_ delta: ProfileDelta, origin: ChangeOrigin?, logged: Bool = true) throws -> ApplyOutcome {
        let time = delta.times.eventTime
        if try isForgotten(delta.subject, at: time) { return .forgotten }
        let subjectKey = delta.subject.key
        let ledgerKey = documentKey(subjectKey, .ledger, delta.messageId.utf8)
        var links: [Identifier] = []
        for peer in delta.links where try !isForgotten(peer, at: time) { links.append(peer) }
        let row = LedgerRow(entry: LedgerEntry(delta: delta), event: delta.event, links: links, consent: delta.consent, channel: delta.channel)
        guard try txn.put(.documents, ledgerKey, ProfileFormat.encode(row), mode: .insertOnly) else {
            if try joinCopy(delta, row, at: ledgerKey) || origin != nil, logged { try log(.message(delta), origin: origin) }
            return .duplicate
        }

        // A source head keeps no history (limit 0): events live in ledger rows, and only views
        // hold the newest few, so heads stay small and rewriting them stays cheap.
        let head = try heads.modify(subjectKey, from: txn, initial: { SourceHead() }) { head in
            head.absorb(delta, historyLimit: 0)
            return head
        }!

        // Identifiers new here: their ledgers hold this message's row at most.
        var fresh: Set<Identifier> = try register(delta.subject) ? [delta.subject] : []
        var structureChanged = !fresh.isEmpty
        for peer in links {
            if try register(peer) {
                structureChanged = true
                fresh.insert(peer)
            }
            if try updateEdge(delta.subject, peer, { $0.add(delta.stamp) }) { structureChanged = true }
        }
        if links.isEmpty && fresh.contains(delta.subject) {
            try startProfile(delta, head: head)
        } else if structureChanged {
            // The peers too: a link whose removal arrived first registers its peer inactive,
            // out of reach of the subject's component, and the peer still needs its own profile.
            try recompute(around: [delta.subject] + links, absorbing: delta, fresh: fresh)
        } else {
            let canonical = try canonicalKey(subjectKey)!
            try views.modify(canonical, from: txn) { $0.head.absorb(delta, historyLimit: historyLimit) }!
        }
        if logged { try log(.message(delta), origin: origin) }
        return .applied
    }

    /// The profile of a new identifier that its first message links to nothing: what `recompute`
    /// builds for it, without the reads that cannot find anything. An identifier gets its index
    /// entry whenever it gets a link or a ledger row (`recompute` registers every node it
    /// reaches), so a new one has no links, and no ledger row but this message's.
    private func startProfile(_ delta: ProfileDelta, head: SourceHead) throws {
        let person = [delta.subject]
        let recent = try newestEvents(of: person, oldViews: [:], oldCanonicalOf: [:], absorbing: delta, fresh: Set(person))
        _ = try storeProfile(of: person, heads: [head], recent: recent)
    }

    /// A second copy of a message already absorbed. An exact copy changes nothing. A differing
    /// one (the same message redelivered to two nodes has two receive times, so two corrected
    /// event times) is joined in as `SourceDocument.apply` joins it — the greater row kept, both
    /// copies' fields joined — so replicas agree whichever copy each saw first. Returns whether
    /// anything changed (then the copy is logged, so replicas further away see it too).
    ///
    /// A catch-up after a partition joins thousands of such copies, so a copy costs what it
    /// changes: only when it changes who is linked to whom, or may move a first-seen time, are
    /// the ledgers read again and the profiles around it rebuilt.
    private func joinCopy(_ delta: ProfileDelta, _ row: LedgerRow, at ledgerKey: [UInt8]) throws -> Bool {
        let existing = try decode(LedgerRow.self, try txn.get(.documents, ledgerKey)!, table: .documents)
        let joined = existing.joined(with: row)
        guard joined != existing else { return false }
        try txn.put(.documents, ledgerKey, ProfileFormat.encode(joined), mode: .upsert)
        var structureChanged = false
        for peer in row.links {
            if try updateEdge(delta.subject, peer, { $0.add(delta.stamp) }) { structureChanged = true }
        }
        var copy = SourceHead()
        copy.absorb(delta, historyLimit: 0)
        var head = try source(delta.subject.key) ?? SourceHead()
        head.mergeFields(copy, historyLimit: 0)
        if !structureChanged, try absorbCopy(copy, replacing: existing, with: joined, into: &head, of: delta.subject) {
            setSource(delta.subject.key, head)
            return true
        }
        try recount(&head, of: delta.subject)
        setSource(delta.subject.key, head)
        try recompute(around: [delta.subject] + row.links)
        return true
    }

    /// What a joined copy changes in its subject's head (whose fields already hold the copy's)
    /// and in its profile, made without reading a ledger: the fields join the copy's, the totals
    /// count the joined row's entry instead of the old one, and the newest events hold the
    /// joined row's event. The result is what `recount` and `recompute` would build. Returns
    /// false, having changed nothing, when it cannot be had that way: a first-seen time may
    /// move, or an event would leave a full list of newest events that only ledgers can refill.
    private func absorbCopy(
        _ copy: SourceHead, replacing old: LedgerRow, with joined: LedgerRow, into head: inout SourceHead, of subject: Identifier
    ) throws -> Bool {
        guard joined.event != nil || old.event == nil else { return false }
        guard let canonical = try canonicalKey(subject.key), var view = try view(canonical) else { return false }
        var newHead = head
        guard newHead.recount(replacing: old.entry, with: joined.entry), view.head.recount(replacing: old.entry, with: joined.entry) else {
            return false
        }
        view.head.mergeFields(copy, historyLimit: historyLimit)
        if let event = joined.event, joined.event != old.event {
            // The joined event orders at or after the old one (rows order by entry, then event,
            // the order of history), so it replaces the old one or joins the list newer than it.
            view.head.insertRecent(event, limit: historyLimit)
        }
        head = newHead
        setView(canonical, view)
        return true
    }

    /// Recomputes a head's totals from its identifier's ledger rows.
    private func recount(_ head: inout SourceHead, of identifier: Identifier) throws {
        head.messageCount = 0
        head.firstSeen = nil
        head.lastSeen = nil
        head.aggregates = SortedDictionary()
        try txn.scan(.documents, prefix: documentKey(identifier.key, .ledger)) { _, value in
            head.count(try decode(LedgerRow.self, value, table: .documents).entry)
            return .next
        }
    }

    // MARK: Unmerge

    func removeLink(_ a: Identifier, _ b: Identifier, stamp: LWWStamp) throws {
        guard let edge = LinkEdge(a, b) else { return }
        try removeLink(edge, stamp: stamp, origin: nil)
    }

    private func removeLink(_ edge: LinkEdge, stamp: LWWStamp, origin: ChangeOrigin?) throws {
        // A removal dated at or before an endpoint's erasure is dominated by it (and its key would name the erased).
        if try isForgotten(edge.low, at: stamp.time) || isForgotten(edge.high, at: stamp.time) { return }
        if try updateEdge(edge.low, edge.high, { $0.remove(stamp) }) { try recompute(around: [edge.low, edge.high]) }
        try log(.unlink(edge, stamp), origin: origin)
    }

    // MARK: Erasure

    /// Erases the person `identifier` belongs to. The erasure time is the requested time or, if
    /// later, the newest time of anything held about them, so erasure always covers all of it.
    func erase(_ identifier: Identifier, requestedAt requested: Int64) throws -> Erasure {
        guard let canonical = try canonicalKey(identifier.key), let view = try self.view(canonical) else {
            // Nothing held here — but another replica, or an edge site that is offline, may hold
            // the customer: the erasure is remembered and replicated all the same, so their data
            // is dropped wherever it is and whenever it arrives.
            // Rows may still mention it (a neighbour's link): the same path as an erasure that
            // arrives from a peer, so every replica ends up the same.
            let forgetKeys = [engine.hasher.forgetKeyBytes(for: identifier)]
            try forgetHashed(forgetKeys, time: requested)
            try log(.erasure(forgetKeys: forgetKeys, time: requested), origin: nil)
            return Erasure(members: [identifier], boundary: requested)
        }
        let members = view.members
        var time = max(requested, view.head.lastSeen ?? requested)
        for member in members {
            try txn.scan(.documents, prefix: documentKey(member.key, .edge)) { _, value in
                time = max(time, try decode(EdgeSummary.self, value, table: .documents).newestTime ?? time)
                return .next
            }
        }
        let forgetKeys = members.map { engine.hasher.forgetKeyBytes(for: $0) }
        try remember(forgetKeys, time: time)
        try forget(members)
        try log(.erasure(forgetKeys: forgetKeys, time: time), origin: nil)
        return Erasure(members: members, boundary: time)
    }

    /// An erasure made on another node: it names forget keys only, so the identifiers held here
    /// are found by hashing each (linear in the identifiers held; erasures are rare).
    private func applyErasure(forgetKeys: [[UInt8]], time: Int64, origin: ChangeOrigin) throws {
        try forgetHashed(forgetKeys, time: time)
        try log(.erasure(forgetKeys: forgetKeys, time: time), origin: origin)
    }

    /// The effect of an erasure that arrived as forget keys: the forget set, and the data here it dominates.
    private func forgetHashed(_ forgetKeys: [[UInt8]], time: Int64) throws {
        try remember(forgetKeys, time: time)
        try forget(try identifiers(hashingTo: Set(forgetKeys)))
    }

    /// The identifiers held here whose forget keys are in `wanted`.
    private func identifiers(hashingTo wanted: Set<[UInt8]>) throws -> [Identifier] {
        try txn.identifiers(withForgetKeys: wanted, hasher: engine.hasher)
    }

    /// Adds forget-set entries (each keeps the latest erasure time).
    private func remember(_ forgetKeys: [[UInt8]], time: Int64) throws {
        for key in forgetKeys {
            let previous = try txn.get(.forget, key).map { try decodeTime($0) } ?? time
            try txn.put(.forget, key, encodeTime(max(previous, time)), mode: .upsert)
        }
        anyForgotten = true
    }

    /// Applies the forget set to `members` as `ProfileState` does: everything dated at or before
    /// a member's erasure time goes — ledger rows, head fields, link assertions, and every
    /// mention of the member in its neighbours' rows and in the change log. What is newer
    /// survives (a replica may hold data the erasing node had not seen), and the people around
    /// the members are rebuilt.
    private func forget(_ members: [Identifier]) throws {
        guard !members.isEmpty else { return }
        var oldCanonicals: Set<[UInt8]> = []
        var touched: Set<Identifier> = Set(members)
        var edges: Set<LinkEdge> = []
        for member in members {
            let time = try forgottenTime(member)!
            try forgetLedger(of: member, upTo: time)
            try txn.scan(.documents, prefix: documentKey(member.key, .edge)) { key, _ in
                if let peer = Identifier(key: key[(member.key.count + 2)...]) {
                    edges.insert(LinkEdge(member, peer)!)
                    touched.insert(peer)
                }
                return .next
            }
        }
        for identifier in touched { if let canonical = try canonicalKey(identifier.key) { oldCanonicals.insert(canonical) } }
        for member in members {
            for edge in edges where edge.low == member || edge.high == member {
                try stripMentions(of: member, fromLedgerOf: edge.other(than: member))
            }
        }
        for edge in edges.sorted() { try rebuildEdge(edge) }
        try purgeChanges(mentioning: members)

        var known: [Identifier] = []
        for identifier in touched.sorted() {
            if try isKnown(identifier) {
                known.append(identifier)
            } else {
                // Its edge rows stay: a removal newer than the erasure is kept, as in the model.
                deleteSource(identifier.key)
                try setCanonical(identifier.key, nil)
                try txn.deletePrefix(.documents, documentKey(identifier.key, .ledger))
            }
        }
        if !known.isEmpty { try recompute(around: known) }
        for canonical in oldCanonicals where try canonicalKey(canonical) != canonical { deleteView(canonical) }
        // Heads and views still cached here are written back at `finish`, under the new keys.
        try txn.retireKeys(of: members)
    }

    /// Drops the member's ledger rows dated at or before `time` and recomputes its head.
    private func forgetLedger(of member: Identifier, upTo time: Int64) throws {
        var dropped: [[UInt8]] = []
        var trimmed: [([UInt8], LedgerRow)] = []
        try txn.scan(.documents, prefix: documentKey(member.key, .ledger)) { key, value in
            var row = try decode(LedgerRow.self, value, table: .documents)
            if row.entry.time <= time {
                dropped.append(key)
            } else if let first = row.otherCopyTimes.first, first <= time {
                row.otherCopyTimes.removeAll { $0 <= time }
                trimmed.append((key, row))
            }
            return .next
        }
        for key in dropped { try txn.delete(.documents, key) }
        for (key, row) in trimmed { try txn.put(.documents, key, ProfileFormat.encode(row), mode: .upsert) }
        guard var head = try source(member.key) else { return }
        head.dropFields(upTo: time)
        try recount(&head, of: member)
        if head.isEmpty { deleteSource(member.key) } else { setSource(member.key, head) }
    }

    /// Removes `member` from the links listed in `neighbour`'s ledger rows dated at or before
    /// the member's erasure time: an erased identifier must not survive in anyone's rows.
    private func stripMentions(of member: Identifier, fromLedgerOf neighbour: Identifier) throws {
        let time = try forgottenTime(member)!
        var rewrites: [([UInt8], LedgerRow)] = []
        try txn.scan(.documents, prefix: documentKey(neighbour.key, .ledger)) { key, value in
            var row = try decode(LedgerRow.self, value, table: .documents)
            if row.entry.time <= time, row.links.contains(member) {
                row.links.removeAll { $0 == member }
                rewrites.append((key, row))
            }
            return .next
        }
        for (key, row) in rewrites { try txn.put(.documents, key, ProfileFormat.encode(row), mode: .upsert) }
    }

    /// Recomputes a link from the ledger rows that assert it, keeping only what is newer than
    /// both endpoints' erasures (the summary alone cannot say which adds an erasure dominates).
    private func rebuildEdge(_ edge: LinkEdge) throws {
        let cutoff = max(try forgottenTime(edge.low) ?? .min, try forgottenTime(edge.high) ?? .min)
        var summary = EdgeSummary()
        for (subject, peer) in [(edge.low, edge.high), (edge.high, edge.low)] {
            let prefix = documentKey(subject.key, .ledger)
            try txn.scan(.documents, prefix: prefix) { key, value in
                let row = try decode(LedgerRow.self, value, table: .documents)
                guard row.links.contains(peer) else { return .next }
                let messageId = String(decoding: key[prefix.count...], as: UTF8.self)
                for time in row.copyTimes where time > cutoff { summary.add(LWWStamp(time: time, tiebreak: messageId)) }
                return .next
            }
        }
        let forward = documentKey(edge.low.key, .edge, edge.high.key), backward = documentKey(edge.high.key, .edge, edge.low.key)
        if let old = try txn.get(.documents, forward).map({ try decode(EdgeSummary.self, $0, table: .documents) }),
            let removal = old.removedAt, removal.time > cutoff
        {
            summary.remove(removal)
        }
        if summary == EdgeSummary() {
            try txn.delete(.documents, forward)
            try txn.delete(.documents, backward)
        } else {
            let bytes = ProfileFormat.encode(summary)
            try txn.put(.documents, forward, bytes, mode: .upsert)
            try txn.put(.documents, backward, bytes, mode: .upsert)
        }
    }

    /// Whether anything of `identifier` is held: its own data, or a link assertion (as in
    /// `ProfileState.identifiers`, a removal alone does not make an identifier known).
    private func isKnown(_ identifier: Identifier) throws -> Bool {
        if try source(identifier.key) != nil { return true }
        var asserted = false
        try txn.scan(.documents, prefix: documentKey(identifier.key, .edge)) { _, value in
            asserted = try decode(EdgeSummary.self, value, table: .documents).lastAdd != nil
            return asserted ? .stop : .next
        }
        return asserted
    }

    /// Rewrites logged changes (committed or pending) so none names an erased member with data
    /// the erasure dominates: such messages and unlinks are dropped, and a message about someone
    /// else loses its link to the member. (Linear in the log; crypto-shredding will replace this,
    /// see docs/storage.md.)
    private func purgeChanges(mentioning members: [Identifier]) throws {
        var cutoffs: [Identifier: Int64] = [:]
        for member in members { cutoffs[member] = try forgottenTime(member)! }
        func dominated(_ identifier: Identifier, _ time: Int64) -> Bool { cutoffs[identifier].map { time <= $0 } ?? false }
        func purged(_ entry: ChangeEntry) -> ChangeEntry? {
            var entry = entry
            switch entry.change {
            case .message(var delta):
                let time = delta.times.eventTime
                if dominated(delta.subject, time) { return nil }
                delta.links.removeAll { dominated($0, time) }
                entry.change = .message(delta)
            case .unlink(let edge, let stamp):
                if dominated(edge.low, stamp.time) || dominated(edge.high, stamp.time) { return nil }
            case .erasure: break
            }
            return entry
        }
        var rewrites: [([UInt8], [ChangeEntry])] = []
        try txn.scan(.changes, prefix: []) { key, value in
            let entries = try decode(value, table: .changes, ChangeRecord.decode)
            let kept = entries.compactMap(purged)
            if kept != entries { rewrites.append((key, kept)) }
            return .next
        }
        for (key, kept) in rewrites {
            // Keys stay: a record keeps the key of its last original entry, which still sorts right.
            if kept.isEmpty { try txn.delete(.changes, key) } else { try txn.put(.changes, key, ChangeRecord.encode(kept), mode: .upsert) }
        }
        // The copies that travel ahead of a backlog too.
        var aheadRewrites: [([UInt8], ChangeEntry?)] = []
        try txn.scan(.ahead, prefix: []) { key, value in
            let entry = try decode(ChangeEntry.self, value, table: .ahead)
            let kept = purged(entry)
            if kept != entry { aheadRewrites.append((key, kept)) }
            return .next
        }
        for (key, kept) in aheadRewrites {
            if let kept { try txn.put(.ahead, key, ProfileFormat.encode(kept), mode: .upsert) } else { try txn.delete(.ahead, key) }
        }
        pendingChanges = pendingChanges.compactMap(purged)
    }

    // MARK: Replication

    /// Applies a change replicated from another node, unless this replica already holds it.
    /// Returns whether it was new here.
    func applyReplicated(_ entry: ChangeEntry) throws -> Bool {
        if versions == nil { versions = try engine.versionVector(in: txn) }
        guard entry.origin != engine.configuration.node, !versions!.covers(origin: entry.origin, sequence: entry.originSequence) else {
            return false
        }
        versions!.advance(origin: entry.origin, to: entry.originSequence)
        let origin = ChangeOrigin(node: entry.origin, sequence: entry.originSequence)
        switch entry.change {
        case .message(let delta): _ = try apply(delta, origin: origin)
        case .unlink(let edge, let stamp): try removeLink(edge, stamp: stamp, origin: origin)
        case .erasure(let keys, let time): try applyErasure(forgetKeys: keys, time: time, origin: origin)
        }
        return true
    }

    /// An erasure or consent decision sent ahead of the backlog it sits in: its effect now,
    /// while its place in the origin's order (version vector, log) waits for the entry itself,
    /// which is then applied again, changes nothing, and is logged for the peers further away.
    func applyAhead(_ entry: ChangeEntry) throws {
        switch entry.change {
        case .erasure(let keys, let time): try forgetHashed(keys, time: time)
        case .message(let delta): _ = try apply(delta, origin: nil, logged: false)
        case .unlink: break
        }
    }

    // MARK: Anti-entropy

    /// Joins another replica's state of one forget key into this one. The result is what
    /// holding both replicas' changes gives: ledger rows united (two copies of a message joined
    /// as `joinCopy` joins them), head fields joined and totals recounted from the ledger, links
    /// joined, the later erasure time kept and everything it dominates dropped — the same rules
    /// as applying messages, so replicas repaired this way are byte-identical to replicas that
    /// applied the changes. Nothing is logged: this repairs state, it is not a new change.
    /// Returns whether anything changed here.
    func join(_ state: DocumentState) throws -> Bool {
        var changed = false
        if let time = state.forgottenAt, try txn.get(.forget, state.forgetKey).map({ try decodeTime($0) < time }) ?? true {
            try forgetHashed([state.forgetKey], time: time)
            changed = true
        }
        guard let identifier = state.identifier else { return changed }
        guard engine.hasher.forgetKeyBytes(for: identifier) == state.forgetKey else {
            throw DocumentStateRejected("the identifier does not hash to the document's forget key")
        }
        let cutoff = try forgottenTime(identifier)
        var incomingHead: SourceHead?
        var ledgerChanged = false
        // As when messages and unlinks apply: profiles are rebuilt around the identifier when its
        // own data changed, and around a link's ends when the link turned on or off or moved in
        // the rule order — a link that only gained a removal builds no profile for its ends.
        var starts: [Identifier] = []
        for row in state.rows {
            switch DocumentPart(rawValue: row.part) {
            case .head?: incomingHead = try decode(SourceHead.self, row.value, table: .documents)
            case .ledger?: if try joinLedgerRow(row, of: identifier, cutoff: cutoff) { ledgerChanged = true }
            case .edge?:
                guard let peer = Identifier(key: row.suffix), peer != identifier else {
                    throw DocumentStateRejected("a link to an invalid identifier")
                }
                let summary = try decode(EdgeSummary.self, row.value, table: .documents)
                let (edgeChanged, structural) = try joinEdge(identifier, peer, summary)
                if edgeChanged { changed = true }
                if structural { starts += [identifier, peer] }
            default: throw DocumentStateRejected("a record of part \(row.part) does not travel")
            }
        }
        // A changed ledger row changes the view's newest events even when the head stays the same.
        if try joinHead(incomingHead, of: identifier, cutoff: cutoff, recount: ledgerChanged) || ledgerChanged { starts.append(identifier) }
        if !starts.isEmpty { try recompute(around: Array(Set(starts)).sorted()) }
        return changed || !starts.isEmpty
    }

    /// Joins one ledger row; returns whether the ledger changed.
    private func joinLedgerRow(_ row: DocumentState.Row, of identifier: Identifier, cutoff: Int64?) throws -> Bool {
        guard !row.suffix.isEmpty, row.suffix.count <= 200, !row.suffix.contains(0), String(validating: row.suffix, as: UTF8.self) != nil else {
            throw DocumentStateRejected("an invalid messageId")
        }
        var incoming = try decode(LedgerRow.self, row.value, table: .documents)
        if let cutoff {
            if incoming.entry.time <= cutoff { return false }
            incoming.otherCopyTimes.removeAll { $0 <= cutoff }
        }
        var links: [Identifier] = []
        for peer in incoming.links where try !isForgotten(peer, at: incoming.entry.time) { links.append(peer) }
        incoming.links = links
        let key = documentKey(identifier.key, .ledger, row.suffix)
        let existing = try txn.get(.documents, key).map { try decode(LedgerRow.self, $0, table: .documents) }
        let joined = existing.map { $0.joined(with: incoming) } ?? incoming
        guard joined != existing else { return false }
        try txn.put(.documents, key, ProfileFormat.encode(joined), mode: .upsert)
        return true
    }

    /// Joins one link summary under both ends; a link to an erased identifier is rebuilt from
    /// the ledger rows that assert it, as an erasure rebuilds it. Returns whether it changed.
    private func joinEdge(_ identifier: Identifier, _ peer: Identifier, _ summary: EdgeSummary) throws -> (changed: Bool, structural: Bool) {
        let forward = documentKey(identifier.key, .edge, peer.key)
        func stored() throws -> EdgeSummary? { try txn.get(.documents, forward).map { try decode(EdgeSummary.self, $0, table: .documents) } }
        let before = try stored()
        _ = try updateEdge(identifier, peer) { $0.join(summary) }
        if try forgottenTime(identifier) != nil || forgottenTime(peer) != nil { try rebuildEdge(LinkEdge(identifier, peer)!) }
        let after = try stored()
        let (old, new) = (before ?? EdgeSummary(), after ?? EdgeSummary())
        // An end first seen in a link assertion gets its profile, as `apply` registers it.
        let unregistered = try new.lastAdd != nil && (canonicalKey(identifier.key) == nil || canonicalKey(peer.key) == nil)
        return (after != before, unregistered || new.isActive != old.isActive || (new.isActive && new.firstAdd != old.firstAdd))
    }

    /// Joins the head's CRDT fields (what the erasure dominates dropped) and recounts its totals
    /// when the ledger changed. Returns whether the head changed.
    private func joinHead(_ incoming: SourceHead?, of identifier: Identifier, cutoff: Int64?, recount recounting: Bool) throws -> Bool {
        guard incoming != nil || recounting else { return false }
        let old = try source(identifier.key)
        var head = old ?? SourceHead()
        if var incoming {
            if let cutoff { incoming.dropFields(upTo: cutoff) }
            head.mergeFields(incoming, historyLimit: 0)
        }
        try recount(&head, of: identifier)
        let joined = head.isEmpty ? nil : head
        guard joined != old else { return false }
        if let joined { setSource(identifier.key, joined) } else { deleteSource(identifier.key) }
        return true
    }

    /// Records how far this node has read `peer`'s log.
    func setCursor(_ position: UInt64, of peer: UInt64) throws {
        // Only forward: a late duplicate reply must not rewind it.
        if let current = try txn.get(.meta, cursorKey(peer)), try engine.decodeSequence(current) >= position { return }
        try txn.put(.meta, cursorKey(peer), sequenceKey(position), mode: .upsert)
    }

    // MARK: Identity

    /// Whether `identifier` is new here (its profile must be built). No hash → identifier index is
    /// kept: a node that receives an erasure as forget keys (replication) hashes its own index keys
    /// instead, which is rare work, where keeping the index cost a random page write per new identifier.
    private func register(_ identifier: Identifier) throws -> Bool {
        try canonicalKey(identifier.key) == nil
    }

    /// Updates the link between `a` and `b` in both directions; returns whether the identity
    /// structure changed (the link turned on or off, or moved in the evaluation order).
    private func updateEdge(_ a: Identifier, _ b: Identifier, _ change: (inout EdgeSummary) -> Void) throws -> Bool {
        let forward = documentKey(a.key, .edge, b.key)
        let old = try txn.get(.documents, forward).map { try decode(EdgeSummary.self, $0, table: .documents) } ?? EdgeSummary()
        var summary = old
        change(&summary)
        guard summary != old else { return false }
        let bytes = ProfileFormat.encode(summary)
        try txn.put(.documents, forward, bytes, mode: .upsert)
        try txn.put(.documents, documentKey(b.key, .edge, a.key), bytes, mode: .upsert)
        return summary.isActive != old.isActive || (summary.isActive && summary.firstAdd != old.firstAdd)
    }

    /// Rebuilds the people in the connected components around `starts`, their views and index.
    ///
    /// `absorbing` is the message being applied, when it is the only change to the ledgers that
    /// the stored views do not reflect yet (`apply`). Then a person's newest events come from the
    /// old views wherever a whole old profile went into it, with that message's event added,
    /// and only the ledgers of the other members are read; not those of `fresh` identifiers
    /// either (new with that message: its row is the only one they can hold). Callers that changed
    /// ledger rows in other ways (copies joined, erasures, repairs) pass nil, and every member's
    /// ledger is read.
    private func recompute(around starts: [Identifier], absorbing delta: ProfileDelta? = nil, fresh: Set<Identifier> = []) throws {
        var nodes = Set(starts)
        var queue = starts
        var links: [LinkEdge: LWWStamp] = [:]
        while let node = queue.popLast() {
            let prefix = documentKey(node.key, .edge)
            try txn.scan(.documents, prefix: prefix) { key, value in
                let summary = try decode(EdgeSummary.self, value, table: .documents)
                guard summary.isActive, let peer = Identifier(key: key[prefix.count...]) else { return .next }
                links[LinkEdge(node, peer)!] = summary.firstAdd!
                if nodes.insert(peer).inserted { queue.append(peer) }
                return .next
            }
        }
        var oldCanonicalOf: [Identifier: [UInt8]] = [:]
        for node in nodes { oldCanonicalOf[node] = try canonicalKey(node.key) }
        let oldCanonicals = Set(oldCanonicalOf.values)
        // Read before any view is rewritten: a person split in two keeps one old canonical key.
        var oldViews: [[UInt8]: ProfileView] = [:]
        if delta != nil, historyLimit > 0 {
            for canonical in oldCanonicals { if let view = try view(canonical) { oldViews[canonical] = view } }
        }
        let people = IdentityResolver(rules: engine.configuration.profile.rules).people(
            nodes: Array(nodes), links: links.map { (edge: $0.key, order: $0.value) })
        var newCanonicals: Set<[UInt8]> = []
        for person in people {
            let heads = try person.compactMap { try source($0.key) }
            let recent = try newestEvents(of: person, oldViews: oldViews, oldCanonicalOf: oldCanonicalOf, absorbing: delta, fresh: fresh)
            newCanonicals.insert(try storeProfile(of: person, heads: heads, recent: recent))
        }
        for stale in oldCanonicals.subtracting(newCanonicals) { deleteView(stale) }
    }

    /// Stores the profile of `person` (its view under its canonical key) and points every
    /// member's index entry at it. Returns the canonical key.
    private func storeProfile(of person: [Identifier], heads: [SourceHead], recent: [EventRecord]) throws -> [UInt8] {
        var view = ProfileView.assemble(members: person, heads: heads, rules: engine.configuration.profile.rules, historyLimit: historyLimit)
        view.head.recent = recent
        let canonical = view.canonical.key
        setView(canonical, view)
        for member in person where try canonicalKey(member.key) != canonical { try setCanonical(member.key, canonical) }
        return canonical
    }

    /// The newest `historyLimit` events over all of `members`. An old view whose members all
    /// belong to `members` already holds the newest events of its members (the newest of a
    /// union are the newest of the parts' newest), so only the ledgers of members outside such
    /// views are read. Linear in those members' histories; only a row whose (time, messageId)
    /// can still make the cut is fully decoded. `absorbing`'s event is added, and the ledgers of
    /// `fresh` identifiers are not read (`recompute`).
    private func newestEvents(
        of members: [Identifier], oldViews: [[UInt8]: ProfileView], oldCanonicalOf: [Identifier: [UInt8]], absorbing delta: ProfileDelta?,
        fresh: Set<Identifier>
    ) throws -> [EventRecord] {
        var newest = SourceHead()
        guard historyLimit > 0 else { return [] }
        let memberSet = Set(members)
        var covered = fresh
        for canonical in Set(members.compactMap { oldCanonicalOf[$0] }) {
            guard let old = oldViews[canonical], old.members.allSatisfy(memberSet.contains) else { continue }
            covered.formUnion(old.members)
            for event in old.head.recent { newest.insertRecent(event, limit: historyLimit) }
        }
        if let delta, memberSet.contains(delta.subject), delta.type.isEvent, let event = delta.event {
            newest.insertRecent(event, limit: historyLimit)
        }
        for member in members where !covered.contains(member) {
            let prefix = documentKey(member.key, .ledger)
            try txn.scan(.documents, prefix: prefix) { key, value in
                try decode(value, table: .documents) { bytes in
                    var reader = BinaryReader(bytes)
                    guard try reader.readByte() == ProfileFormat.version else {
                        throw BinaryDecodingError(.unsupportedVersion, offset: 0, "ledger row")
                    }
                    let entry = try LedgerEntry(from: &reader)
                    guard entry.type.isEvent else { return }
                    if newest.recent.count == historyLimit, let last = newest.recent.last {
                        let messageId = String(decoding: key[prefix.count...], as: UTF8.self)
                        guard (entry.time, messageId) > (last.time, last.messageId) else { return }
                    }
                    guard try reader.readBool() else { return }
                    newest.insertRecent(try EventRecord(from: &reader), limit: historyLimit)
                }
                return .next
            }
        }
        return newest.recent
    }

    // MARK: Erasure checks

    private func isForgotten(_ identifier: Identifier, at time: Int64) throws -> Bool {
        try forgottenTime(identifier).map { time <= $0 } ?? false
    }

    /// The erasure time of `identifier`, if it was ever erased.
    private func forgottenTime(_ identifier: Identifier) throws -> Int64? {
        guard anyForgotten, let bytes = try txn.get(.forget, engine.hasher.forgetKeyBytes(for: identifier)) else { return nil }
        return try decodeTime(bytes)
    }

    private func encodeTime(_ time: Int64) -> [UInt8] { encodeForgetTime(time) }
    private func decodeTime(_ bytes: [UInt8]) throws -> Int64 { try decodeForgetTime(bytes) }

    // MARK: Change log

    /// Logs a change accepted here (`origin` nil: this node, at its new sequence) or replicated.
    private func log(_ change: ChangeEntry.Change, origin: ChangeOrigin?) throws {
        sequence += 1
        let origin = origin ?? ChangeOrigin(node: engine.configuration.node, sequence: sequence)
        pendingChanges.append(ChangeEntry(sequence: sequence, origin: origin.node, originSequence: origin.sequence, change: change))
    }

    // MARK: Cached tables

    private func source(_ key: [UInt8]) throws -> SourceHead? { try heads.get(key, from: txn) }
    private func setSource(_ key: [UInt8], _ head: SourceHead) { heads.set(key, head) }
    private func deleteSource(_ key: [UInt8]) { heads.delete(key) }
    private func view(_ key: [UInt8]) throws -> ProfileView? { try views.get(key, from: txn) }
    private func setView(_ key: [UInt8], _ view: ProfileView) { views.set(key, view) }
    private func deleteView(_ key: [UInt8]) { views.delete(key) }

    private func canonicalKey(_ key: [UInt8]) throws -> [UInt8]? {
        let cacheKey = ByteKey(key)
        if let cached = index[cacheKey] { return cached }
        let found = try txn.get(.documents, documentKey(key, .index))
        index[cacheKey] = found
        return found
    }

    private func setCanonical(_ key: [UInt8], _ canonical: [UInt8]?) throws {
        index[ByteKey(key)] = .some(canonical)
        if let canonical {
            try txn.put(.documents, documentKey(key, .index), canonical, mode: .upsert)
        } else {
            try txn.delete(.documents, documentKey(key, .index))
        }
    }
}

/// A forget-set value: the erasure time.
func encodeForgetTime(_ time: Int64) -> [UInt8] {
    var writer = BinaryWriter(capacity: 10)
    writer.write(signed: time)
    return writer.bytes
}

func decodeForgetTime(_ bytes: [UInt8]) throws -> Int64 {
    try decode(bytes, table: .forget) { bytes in
        var reader = BinaryReader(bytes)
        return try reader.readSigned()
    }
}

extension LedgerEntry {
    init(delta: ProfileDelta) {
        self.init(type: delta.type, name: delta.event?.name ?? "", time: delta.times.eventTime, revenueMicros: delta.event?.revenueMicros)
    }
}

extension StoreWriting {
    @discardableResult
    func deletePrefix(_ table: Table, _ prefix: [UInt8]) throws -> Int {
        var keys: [[UInt8]] = []
        try scan(table, prefix: prefix) { key, _ in
            keys.append(key)
            return .next
        }
        for key in keys { try delete(table, key) }
        return keys.count
    }
}
