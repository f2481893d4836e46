import KithCRDT
import KithProfile

/// The digest tree over the key space of forget keys, for anti-entropy (docs/replication.md).
///
/// - A **leaf** is one forget key: the digest of the identifier's own records (head, links,
///   ledger rows) and of its forget-set entry. The derived index and view rows are left out:
///   replicas that hold the same sources derive the same ones. Leaves are not stored: a bucket
///   that differs has its leaves computed from its rows when a comparison asks (rare work).
/// - Above the leaves, stored in `merkle` (`DigestTreeShape`): 1,024 **buckets**, 32
///   **ranges** and the **root**. Each node's digest is the sum of the digests under it.
///
/// Digests are multiset sums (`Digest128`) of keyed row hashes, so a write updates them by
/// adding the new rows' hashes and subtracting the old ones', with no rescan: `DigestingWriter`
/// does it for every write of a transaction, and `flush` adds each transaction's changes to
/// the few bucket, range and root rows they touch, once.
enum DigestTree {
    /// The `merkle` key of a node: its depth, then its key (`DigestTreeShape`).
    static func nodeKey(_ node: [UInt8]) -> [UInt8] { [UInt8(node.count)] + node }

    /// Whether a row counts toward its owner's digest.
    static func isCovered(_ table: Table, _ key: [UInt8]) -> Bool {
        switch table {
        case .forget: return true
        case .documents:
            guard let row = RowKey(key) else { return false }
            return coveredParts.contains(row.partByte)
        default: return false
        }
    }

    /// The tree's layout version in `meta` (a store with another is rebuilt at open).
    package static let layout: UInt8 = 2

    static let coveredParts: Set<UInt8> = [DocumentPart.head.rawValue, DocumentPart.edge.rawValue, DocumentPart.ledger.rawValue]

    /// What owns a covered row before hashing: a document's identifier key, or a forget key itself.
    package static func owner(_ table: Table, _ key: [UInt8]) -> [UInt8] {
        table == .forget ? key : Array(RowKey(stored: key).owner)
    }
}

extension HMACForgetKeyHasher {
    /// The hash of one covered row: HMAC-SHA256 under the forget secret, so that a digest left in
    /// a free page or a backup cannot be used to test guesses about erased data.
    func rowDigest(_ table: Table, _ key: [UInt8], _ value: [UInt8]) -> Digest128 {
        var writer = BinaryWriter(capacity: key.count + value.count + 4)
        writer.write(byte: UInt8(table.rawValue))
        writer.write(bytes: key)
        writer.write(raw: value)
        return Digest128(bytes: self.key.authenticate(writer.bytes))
    }

    /// The forget key of a row's owner (`DigestTree.owner`).
    package func forgetKey(ofOwner owner: [UInt8], in table: Table) -> [UInt8] {
        table == .forget ? owner : forgetKeyBytes(forKey: owner)
    }
}

/// A write transaction that keeps the digest tree up to date: every put and delete of a covered
/// row adds the new row's hash to its owner's digest and subtracts the old row's. The old value
/// comes from what the transaction already read or wrote when it can (the engine reads heads,
/// links and ledger rows before it rewrites them), else from one extra read.
final class DigestingWriter: StoreWriting, ReadingThrough {
    package let base: any StoreWriting
    private let hasher: HMACForgetKeyHasher
    /// Covered rows' values as this transaction last saw them (nil: absent), by table.
    private var known: [[ByteKey: [UInt8]?]] = Array(repeating: [:], count: Table.allCases.count)
    /// Forget key → the change of its digest in this transaction.
    private var changes: [ByteKey: Digest128] = [:]
    private var owners: [ByteKey: [UInt8]] = [:]

    package init(base: any StoreWriting, hasher: HMACForgetKeyHasher) {
        self.base = base
        self.hasher = hasher
    }

    package var readThrough: any StoreReading { base }

    package func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? {
        let value = try base.get(table, key)
        if DigestTree.isCovered(table, key) { known[table.rawValue][ByteKey(key)] = .some(value) }
        return value
    }

    /// Through `get`, so that what is read is known here too.
    package func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        try get(table, Array(key)).map { try $0.withUnsafeBytes(body) }
    }

    @discardableResult
    package func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], mode: PutMode) throws -> Bool {
        guard DigestTree.isCovered(table, key) else { return try base.put(table, key, value, mode: mode) }
        if mode == .insertOnly {
            guard try base.put(table, key, value, mode: mode) else { return false }
            record(table, key, old: nil, new: value)
            return true
        }
        let old = try previous(table, key)
        let stored = try base.put(table, key, value, mode: mode)
        record(table, key, old: old, new: value)
        return stored
    }

    @discardableResult
    package func delete(_ table: Table, _ key: [UInt8]) throws -> Bool {
        guard DigestTree.isCovered(table, key) else { return try base.delete(table, key) }
        let old = try previous(table, key)
        guard try base.delete(table, key) else { return false }
        record(table, key, old: old, new: nil)
        return true
    }

    /// Passed on whole, so that the table below writes each block once.
    package func write(_ table: Table, _ changes: [(key: [UInt8], value: [UInt8]?)]) throws {
        let old = try changes.map { DigestTree.isCovered(table, $0.key) ? try previous(table, $0.key) : nil }
        try base.write(table, changes)
        for (change, old) in zip(changes, old) where DigestTree.isCovered(table, change.key) {
            record(table, change.key, old: old, new: change.value)
        }
    }

    package func retireKeys(of identifiers: [Identifier]) throws { try base.retireKeys(of: identifiers) }

    /// Rows stay as they were: nothing to add to the tree.
    package func deflateLedgerBlocks(of owner: [UInt8], atMost limit: Int) throws -> Int {
        try base.deflateLedgerBlocks(of: owner, atMost: limit)
    }

    package func deflateIdentifierRow(of owner: [UInt8]) throws -> Bool { try base.deflateIdentifierRow(of: owner) }
    package func repack(from start: [UInt8], beforeBucket bucket: Int, atMost limit: Int) throws -> (rows: Int, next: [UInt8]?) {
        try base.repack(from: start, beforeBucket: bucket, atMost: limit)
    }
    package func keepsLedgerTailWithIdentifierRow(of owner: [UInt8]) throws -> Bool {
        try base.keepsLedgerTailWithIdentifierRow(of: owner)
    }

    /// The change log is not covered by the tree.
    package func putChanges(_ entries: [ChangeEntry], at key: [UInt8], mode: PutMode) throws {
        try base.putChanges(entries, at: key, mode: mode)
    }

    private func previous(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? {
        if let seen = known[table.rawValue][ByteKey(key)] { return seen }
        return try base.get(table, key)
    }

    private func record(_ table: Table, _ key: [UInt8], old: [UInt8]?, new: [UInt8]?) {
        known[table.rawValue][ByteKey(key)] = .some(new)
        guard old != new else { return }
        let ownerKey = ByteKey(DigestTree.owner(table, key))
        let owner = owners[ownerKey] ?? hasher.forgetKey(ofOwner: ownerKey.bytes, in: table)
        owners[ownerKey] = owner
        var change = Digest128.zero
        if let old { change -= hasher.rowDigest(table, key, old) }
        if let new { change += hasher.rowDigest(table, key, new) }
        changes[ByteKey(owner), default: .zero] += change
    }

    /// Adds this transaction's changes to the nodes above the changed leaves. Call before commit.
    package func flush() throws {
        var nodes: [[UInt8]: Digest128] = [:]
        for (owner, change) in changes where !change.isZero {
            for node in DigestTreeShape.ancestors(of: owner.bytes) { nodes[node, default: .zero] += change }
        }
        for (node, change) in nodes where !change.isZero {
            let key = DigestTree.nodeKey(node)
            let sum = try readDigest(base, .merkle, key) + change
            if sum.isZero { try base.delete(.merkle, key) } else { try base.put(.merkle, key, sum.bytes, mode: .upsert) }
        }
        changes = [:]
    }
}

/// A stored digest (zero when absent).
func readDigest(_ reader: some StoreReading, _ table: Table, _ key: [UInt8]) throws -> Digest128 {
    guard let bytes = try reader.get(table, key) else { return .zero }
    return try readDigestValue(bytes, table)
}

extension StoreEngine {
    /// The digest of a tree node (`DigestTreeShape`) or of one forget key (a leaf, computed).
    package func digest(of node: [UInt8], in reader: some StoreReading) throws -> Digest128 {
        if DigestTreeShape.isNode(node) { return try readDigest(reader, .merkle, DigestTree.nodeKey(node)) }
        return try documentStates(for: [node], in: reader).first.map(leafDigest) ?? .zero
    }

    /// The children of a tree node with a non-zero digest, in key order: the nodes one level
    /// down, or under a bucket its forget keys with their digests (computed from the rows).
    package func digestChildren(of node: [UInt8], in reader: some StoreReading) throws -> [DigestEntry] {
        precondition(DigestTreeShape.isNode(node), "leaves have no children")
        guard !DigestTreeShape.isBucket(node) else {
            let bucket = DigestTreeShape.bucketIndex(node)
            var identifiers: [[UInt8]: Identifier] = [:]
            for identifier in try reader.identifiers(inBucket: bucket, hasher: hasher) {
                identifiers[hasher.forgetKeyBytes(for: identifier)] = identifier
            }
            var keys = Set(identifiers.keys)
            try reader.scan(.forget, prefix: [DigestTreeShape.firstBytes(ofBucket: bucket)[0]]) { key, _ in
                if DigestTreeShape.bucket(of: key) == bucket { keys.insert(key) }
                return .next
            }
            let sorted = keys.sorted { $0.lexicographicallyPrecedes($1) }
            return try documentStates(for: sorted, of: identifiers, in: reader).map { DigestEntry(key: $0.forgetKey, digest: leafDigest($0)) }
                .filter { !$0.digest.isZero }
        }
        var children: [DigestEntry] = []
        let first = node.isEmpty ? [UInt8(1), 0] : DigestTree.nodeKey(DigestTreeShape.bucketKey(Int(node[0]) * DigestTreeShape.bucketsPerRange))
        try reader.scan(.merkle, from: first) { key, value in
            let child = Array(key.dropFirst())
            guard key[0] == node.count + 1, DigestTreeShape.isChild(child, of: node) else { return .stop }
            children.append(DigestEntry(key: child, digest: try readDigestValue(value, .merkle)))
            return .next
        }
        return children
    }

    /// A leaf's digest: the hashes of exactly the rows a document state ships, as stored.
    func leafDigest(_ state: DocumentState) -> Digest128 {
        var digest = Digest128.zero
        if let identifier = state.identifier {
            for row in state.rows {
                digest += hasher.rowDigest(.documents, documentPrefix(identifier.key) + [row.part] + row.suffix, row.value)
            }
        }
        if let record = state.forgotten { digest += hasher.rowDigest(.forget, state.forgetKey, encodeForgetRecord(record)) }
        return digest
    }

    /// Every leaf digest computed from the rows themselves, without the stored tree: what the
    /// tree must sum (checked by tests; used to build the tree for a store written before it).
    package func recomputedDigests(in reader: some StoreReading) throws -> [[UInt8]: Digest128] {
        var leaves: [[UInt8]: Digest128] = [:]
        var owners: [[UInt8]: [UInt8]] = [:]
        for table in [Table.documents, .forget] {
            try reader.scan(table, prefix: []) { key, value in
                guard DigestTree.isCovered(table, key) else { return .next }
                let ownerKey = DigestTree.owner(table, key)
                let owner = owners[ownerKey] ?? hasher.forgetKey(ofOwner: ownerKey, in: table)
                owners[ownerKey] = owner
                leaves[owner, default: .zero] += hasher.rowDigest(table, key, value)
                return .next
            }
        }
        return leaves.filter { !$0.value.isZero }
    }

    /// The tree's nodes as they must be, summed from `leaves`.
    package static func nodes(over leaves: [[UInt8]: Digest128]) -> [[UInt8]: Digest128] {
        var nodes: [[UInt8]: Digest128] = [:]
        for (owner, digest) in leaves {
            for node in DigestTreeShape.ancestors(of: owner) { nodes[node, default: .zero] += digest }
        }
        return nodes.filter { !$0.value.isZero }
    }

    /// The stored tree's nodes.
    func storedNodes(in reader: some StoreReading) throws -> [[UInt8]: Digest128] {
        var nodes: [[UInt8]: Digest128] = [:]
        try reader.scan(.merkle, prefix: []) { key, value in
            nodes[Array(key.dropFirst())] = try readDigestValue(value, .merkle)
            return .next
        }
        return nodes
    }

    /// Replaces the stored tree by one computed from the rows.
    func rebuildDigests(in txn: any StoreWriting) throws {
        try txn.deletePrefix(.merkle, [])
        for (node, digest) in Self.nodes(over: try recomputedDigests(in: txn)) {
            try txn.put(.merkle, DigestTree.nodeKey(node), digest.bytes, mode: .upsert)
        }
        try txn.put(.meta, digestsMetaKey, [DigestTree.layout], mode: .upsert)
    }

    /// Drops the tree (`reconcileReplicationState`).
    func dropDigests(in txn: any StoreWriting) throws {
        try txn.deletePrefix(.merkle, [])
        try txn.delete(.meta, digestsMetaKey)
    }

    /// What this replica holds under each of `forgetKeys` (none for a key it holds nothing of),
    /// as anti-entropy ships it.
    package func documentStates(for forgetKeys: [[UInt8]], in reader: some StoreReading) throws -> [DocumentState] {
        var identifiers: [[UInt8]: Identifier] = [:]
        for identifier in try reader.identifiers(withForgetKeys: Set(forgetKeys), hasher: hasher) {
            identifiers[hasher.forgetKeyBytes(for: identifier)] = identifier
        }
        return try documentStates(for: forgetKeys, of: identifiers, in: reader)
    }

    /// The states of `forgetKeys`, whose identifiers held here (by forget key) are known.
    func documentStates(for forgetKeys: [[UInt8]], of identifiers: [[UInt8]: Identifier], in reader: some StoreReading) throws
        -> [DocumentState]
    {
        var states: [DocumentState] = []
        for forgetKey in forgetKeys {
            let identifier = identifiers[forgetKey]
            let forgotten = try reader.get(.forget, forgetKey).map(decodeForgetRecord)
            var rows: [DocumentState.Row] = []
            if let identifier {
                let prefix = documentPrefix(identifier.key)
                try reader.scan(.documents, prefix: prefix) { key, value in
                    let row = RowKey(stored: key)
                    if DigestTree.coveredParts.contains(row.partByte) {
                        rows.append(DocumentState.Row(part: row.partByte, suffix: Array(row.suffix), value: value))
                    }
                    return .next
                }
            }
            guard !rows.isEmpty || forgotten != nil else { continue }
            states.append(DocumentState(forgetKey: forgetKey, identifier: rows.isEmpty ? nil : identifier, forgotten: forgotten, rows: rows))
        }
        return states
    }
}

private func readDigestValue(_ bytes: [UInt8], _ table: Table) throws -> Digest128 {
    try decode(bytes, table: table) { bytes in
        guard bytes.count == Digest128.byteCount else { throw BinaryDecodingError(.invalidValue, offset: 0, "digest of \(bytes.count) bytes") }
        return Digest128(bytes: bytes)
    }
}
