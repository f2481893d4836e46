import KithCRDT
import KithCompression
import KithCrypto
import KithLMDB
import KithProfile
import KithStore
import Synchronization

/// Sealing of the durable store (docs/storage.md, "Sealing"): every row that can hold personal
/// data is encrypted with AES-256-GCM under a data key of the identifier that owns it, and LMDB
/// keys name identifiers only by pseudonym. Erasure destroys the keys, so what LMDB leaves in
/// free pages, and every backup taken before, can no longer be read.
///
/// The engine does not know: these adapters take and give the engine's plain keys and values.
///
/// `documents`: `pseudonym(owner) ‖ part ‖ suffix`, where an edge's suffix is the peer's
/// pseudonym and a ledger row's its messageId; the value is `slot ‖ tag ‖ sealed box` (which
/// key sealed it), the sealed key being the associated data. An extra row `pseudonym ‖ 0`
/// holds the owner's identifier key, sealed under the owner's current key: it is what says
/// which key the owner's new rows get, and lets scans give the engine plain keys. An edge's
/// plaintext starts with the peer's identifier key for the same reason.
/// `changes` and `ahead`: each entry is sealed on its own under its owner's key (a message's
/// subject, an unlink's lower end); erasures carry only forget keys and stay plain.
/// `meta` and `forget` hold no personal data and pass through.
///
/// A class: every transaction's session holds it, and one reference is one retain (a struct of
/// three references was three per read).
final class Sealing: Sendable {
    let keys: DataKeyStore
    let hasher: HMACForgetKeyHasher
    /// Cipher contexts of finished transactions, for the next ones.
    let ciphers: CipherPool

    init(keys: DataKeyStore, hasher: HMACForgetKeyHasher) {
        self.keys = keys
        self.hasher = hasher
        ciphers = CipherPool(pseudonymKey: hasher.key)
    }

    static let pseudonymSize = 16
    /// The part of the row holding the owner's identifier key.
    static let ownerPart: UInt8 = 0
    /// `meta` rows `retired ‖ slot ‖ tag`: keys of erased identifiers still to be destroyed
    /// (written with the erasure, removed once the keys are gone).
    static let retiredPrefix = Array("retired:".utf8)
}

/// What one transaction learned and changed: pseudonyms it computed, owners it saw, the key
/// each owner's new rows get, keys it was issued (returned to the pool if it aborts) and keys
/// it retired (destroyed after it commits).
final class SealingSession {
    let sealing: Sealing
    private var pseudonyms = PseudonymMemo()
    private var keysInUse: [ByteKey: (id: DataKeyID, key: AESGCM.Key)] = [:]
    var issued: [DataKeyID] = []
    var retired: [DataKeyID] = []
    /// Owners some of whose rows this transaction deleted: their owner rows go if nothing else is left.
    var deletedFrom: Set<[UInt8]> = []
    /// Identifier rows a write has read (nil: none stored, or under a destroyed key) or changed,
    /// by pseudonym. The changed ones are sealed once, by `SealedWriting.finish`: a message sets
    /// its subject's head and its profile's view, which share one row.
    private var identifierRows: [ByteKey: IdentifierRow?] = [:]
    private var changedIdentifierRows: Set<ByteKey> = []
    /// Changed rows the sweep asked to be stored deflated (`SealedWriting.deflateIdentifierRow`).
    private var rowsToDeflate: Set<ByteKey> = []
    /// Whether point reads remember the pseudonyms they compute. A write reads an identifier's
    /// rows and then writes them, so it meets each pseudonym again; a read transaction is
    /// mostly one point read, where remembering costs more than it could save.
    private let remembersPointReads: Bool

    init(_ sealing: Sealing, writing: Bool) {
        self.sealing = sealing
        remembersPointReads = writing
        (contexts, contextGeneration) = sealing.ciphers.take()
    }

    deinit { sealing.ciphers.give(contexts, generation: contextGeneration) }

    /// The first `Sealing.pseudonymSize` bytes of the identifier's forget key.
    func pseudonym(_ identifierKey: some Collection<UInt8>) -> [UInt8] {
        let identifierKey = Array(identifierKey)
        if let known = pseudonyms.pseudonym(of: identifierKey) { return known }
        let pseudonym = [UInt8](unsafeUninitializedCapacity: Sealing.pseudonymSize) { output, initialized in
            identifierKey.withUnsafeBytes { contexts.mac.authenticate($0, into: UnsafeMutableRawBufferPointer(output)) }
            initialized = Sealing.pseudonymSize
        }
        pseudonyms.insert(owner: identifierKey, pseudonym: pseudonym)
        return pseudonym
    }

    /// `body` given the LMDB key of the engine key `plain` of `documents`. For the rows a point
    /// read asks for (an owner's view, index, head or ledger row) the key is made on the stack.
    func withSealedKey<T>(_ plain: [UInt8], _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        guard let row = RowKey(plain), row.part != .edge else { return try sealedKey(plain).withUnsafeBytes(body) }
        let zero = row.ownerCount
        return try withUnsafeTemporaryAllocation(byteCount: Sealing.pseudonymSize + plain.count - zero - 1, alignment: 1) { key in
            plain.withUnsafeBytes { plain in
                writePseudonym(
                    of: UnsafeRawBufferPointer(rebasing: plain[..<zero]), into: UnsafeMutableRawBufferPointer(rebasing: key[..<Sealing.pseudonymSize])
                )
                UnsafeMutableRawBufferPointer(rebasing: key[Sealing.pseudonymSize...]).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: plain[(zero + 1)...]))
            }
            return try body(UnsafeRawBufferPointer(key))
        }
    }

    private func writePseudonym(of identifierKey: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) {
        if let known = pseudonyms.pseudonym(ofBytes: identifierKey) {
            output.copyBytes(from: known)
            return
        }
        contexts.mac.authenticate(identifierKey, into: output)
        if remembersPointReads { pseudonyms.insert(owner: Array(identifierKey), pseudonym: Array(output)) }
    }

    /// The identifier key behind a pseudonym, when this transaction has seen it.
    func owner(of pseudonym: [UInt8]) -> [UInt8]? { pseudonyms.owner(of: pseudonym) }

    func remember(owner: [UInt8], of pseudonym: [UInt8]) { pseudonyms.insert(owner: owner, pseudonym: pseudonym) }

    /// The identifier row of `pseudonym` as this write left it: `.some(nil)` when it has none,
    /// nil when this session does not know (a read session never keeps them).
    func cachedIdentifierRow(_ pseudonym: some Collection<UInt8>) -> IdentifierRow?? {
        identifierRows.isEmpty ? nil : identifierRows[ByteKey(Array(pseudonym))]
    }

    /// Keeps `row` as `pseudonym`'s (read sessions keep nothing: they rarely meet a row twice);
    /// `changed` marks it to be sealed and written before commit.
    func keepIdentifierRow(_ pseudonym: [UInt8], _ row: IdentifierRow?, changed: Bool) {
        guard remembersPointReads else {
            precondition(!changed, "a read session changed the identifier row of a pseudonym")
            return
        }
        identifierRows[ByteKey(pseudonym)] = .some(row)
        if changed { changedIdentifierRows.insert(ByteKey(pseudonym)) }
    }

    /// Whether this write changed `pseudonym`'s identifier row (it is sealed at commit).
    func changedIdentifierRow(_ pseudonym: [UInt8]) -> Bool { changedIdentifierRows.contains(ByteKey(pseudonym)) }

    /// `pseudonym`'s changed row is to be stored deflated at commit.
    func deflateAtCommit(_ pseudonym: [UInt8]) { rowsToDeflate.insert(ByteKey(pseudonym)) }

    /// Whether this session keeps the identifier rows it reads (a write does).
    var keepsIdentifierRows: Bool { remembersPointReads }

    /// Drops what this write knew of `pseudonym`'s row (its rows were all deleted).
    func dropIdentifierRow(_ pseudonym: [UInt8]) {
        identifierRows[ByteKey(pseudonym)] = nil
        changedIdentifierRows.remove(ByteKey(pseudonym))
        rowsToDeflate.remove(ByteKey(pseudonym))
    }

    /// The changed identifier rows, in pseudonym order, marked written, each with whether to
    /// store it deflated.
    func takeChangedIdentifierRows() -> [(pseudonym: [UInt8], row: IdentifierRow?, deflated: Bool)] {
        let changed = changedIdentifierRows.map(\.bytes).sorted { $0.lexicographicallyPrecedes($1) }
        defer { (changedIdentifierRows, rowsToDeflate) = ([], []) }
        return changed.map { ($0, identifierRows[ByteKey($0)] ?? nil, rowsToDeflate.contains(ByteKey($0))) }
    }

    /// The key an owner's new rows get in this transaction, once known.
    func keyInUse(_ pseudonym: [UInt8]) -> (id: DataKeyID, key: AESGCM.Key)? { keysInUse[ByteKey(pseudonym)] }

    func setKeyInUse(_ pseudonym: [UInt8], _ key: (id: DataKeyID, key: AESGCM.Key)?) { keysInUse[ByteKey(pseudonym)] = key }

    /// The LMDB key of an engine key of `documents` (also of a prefix or scan start of one).
    func sealedKey(_ plain: [UInt8]) -> [UInt8] {
        guard !plain.isEmpty else { return [] }
        // A prefix or scan start may end before its part, so it is not always a `RowKey`.
        guard let zero = plain.firstIndex(of: 0) else { return pseudonym(plain) }
        return sealedKey(plain, separatorAt: zero, ownerPseudonym: pseudonym(plain[..<zero]))
    }

    /// `sealedKey(plain)` for a key whose owner ends at `zero` and whose owner's pseudonym the
    /// caller has already.
    func sealedKey(_ plain: [UInt8], separatorAt zero: Int, ownerPseudonym: [UInt8]) -> [UInt8] {
        var key = ownerPseudonym
        guard zero + 1 < plain.count else { return key }
        let part = plain[zero + 1]
        key.append(part)
        let suffix = plain[(zero + 2)...]
        if part == DocumentPart.edge.rawValue, !suffix.isEmpty { key += pseudonym(suffix) } else { key += suffix }
        return key
    }

    // MARK: - Boxes

    /// The libcrypto contexts of this transaction, taken from the pool and given back: one
    /// AES-GCM context for its rows, re-keyed from owner to owner, and one HMAC context for its
    /// pseudonyms. Nonces are drawn in blocks.
    private let contexts: SessionContexts
    private let contextGeneration: UInt64
    private var cipher: AESGCMContext { contexts.cipher }
    private var nonces = NonceSource()

    func seal(_ plaintext: [UInt8], _ id: DataKeyID, _ key: AESGCM.Key, associatedData: [UInt8]) throws -> [UInt8] {
        try seal(plaintext, id, key, associatedData: associatedData, checked: false)
    }

    private func seal(_ plaintext: [UInt8], _ id: DataKeyID, _ key: AESGCM.Key, associatedData: [UInt8], checked: Bool) throws -> [UInt8] {
        var writer = BinaryWriter(capacity: plaintext.count + AESGCM.overhead + 18)
        writer.write(varint: UInt64(id.slot))
        writer.write(bigEndian: id.tag)
        if checked { writer.write(raw: Self.headerCheck(writer.bytes[...])) }
        writer.write(raw: try cipher.seal(plaintext, key: key, nonce: try nonces.next(), associatedData: associatedData))
        return writer.bytes
    }

    // MARK: - Identifier rows

    /// An identifier row (`pseudonym ‖ 0`) is sealed as other rows are, with a CRC-32 of its key
    /// header after the header: `varint(slot) ‖ tag ‖ crc (4 bytes, big-endian) ‖ box` (sealed
    /// layout 3). A row whose key is destroyed is an erased owner's; the check tells that apart
    /// from a header damaged into naming no live key, which no other row of the owner may be
    /// there to show (most owners keep everything in this row).
    func sealIdentifierRow(_ plaintext: [UInt8], _ id: DataKeyID, _ key: AESGCM.Key, rowKey: [UInt8]) throws -> [UInt8] {
        try seal(plaintext, id, key, associatedData: rowKey, checked: true)
    }

    static let headerCheckSize = 4

    /// CRC-32 of a key header, big-endian.
    private static func headerCheck(_ header: ArraySlice<UInt8>) -> [UInt8] {
        let crc = Checksum.crc32(header)
        return (0..<headerCheckSize).map { UInt8(truncatingIfNeeded: crc >> (24 - 8 * UInt32($0))) }
    }

    /// Which key sealed an identifier row, its header checked; the offset is the box's.
    static func identifierRowKeyID(_ sealed: [UInt8]) throws -> (id: DataKeyID, offset: Int) {
        try sealed.withUnsafeBytes { try identifierRowKeyID($0) }
    }

    static func identifierRowKeyID(_ sealed: UnsafeRawBufferPointer) throws -> (id: DataKeyID, offset: Int) {
        let (id, header) = try keyID(sealed)
        guard sealed.count >= header + headerCheckSize else { throw BinaryDecodingError(.truncated, offset: header, "key header check") }
        let check = headerCheck(Array(sealed[..<header])[...])
        guard check.indices.allSatisfy({ sealed[header + $0] == check[$0] }) else {
            throw BinaryDecodingError(.invalidValue, offset: header, "an identifier row's key header does not match its check")
        }
        return (id, header + headerCheckSize)
    }

    /// An identifier row's plaintext, or nil when the key that sealed it has been destroyed (its
    /// owner was erased); a damaged row throws.
    func openIdentifierRow(_ sealed: UnsafeRawBufferPointer, rowKey: UnsafeRawBufferPointer) throws -> [UInt8]? {
        do {
            let (id, offset) = try Self.identifierRowKeyID(sealed)
            guard let key = sealing.keys.key(for: id) else { return nil }
            return try cipher.open(UnsafeRawBufferPointer(rebasing: sealed[offset...]), key: key, associatedData: rowKey)
        } catch {
            throw StoreCorruption(table: Table.documents.name, underlying: error)
        }
    }

    func openIdentifierRow(_ sealed: [UInt8], rowKey: [UInt8]) throws -> [UInt8]? {
        try sealed.withUnsafeBytes { sealed in try rowKey.withUnsafeBytes { try openIdentifierRow(sealed, rowKey: $0) } }
    }

    /// A row of sealed layout 2 with its header's check added (the box is unchanged: its
    /// associated data is the row's key, not the header).
    static func addingHeaderCheck(_ sealed: [UInt8]) throws -> [UInt8] {
        let header = try keyID(sealed).offset
        var writer = BinaryWriter(capacity: sealed.count + headerCheckSize)
        writer.write(raw: Array(sealed[..<header]))
        writer.write(raw: headerCheck(sealed[..<header]))
        writer.write(raw: Array(sealed[header...]))
        return writer.bytes
    }

    /// Which key sealed a box: `varint(slot) ‖ tag (8 bytes, big-endian)` before it.
    static func keyID(_ sealed: [UInt8]) throws -> (id: DataKeyID, offset: Int) {
        try sealed.withUnsafeBytes { try keyID($0) }
    }

    static func keyID(_ sealed: UnsafeRawBufferPointer) throws -> (id: DataKeyID, offset: Int) {
        var slot: UInt64 = 0
        var offset = 0
        while true {
            // A slot is a UInt32: at most five varint bytes.
            guard offset < min(sealed.count, 5) else { throw BinaryDecodingError(.truncated, offset: offset, "key slot") }
            let byte = sealed[offset]
            slot |= UInt64(byte & 0x7F) << (7 * UInt64(offset))
            offset += 1
            if byte & 0x80 == 0 { break }
        }
        guard slot <= UInt64(UInt32.max) else { throw BinaryDecodingError(.invalidValue, offset: 0, "key slot") }
        guard sealed.count >= offset + 8 else { throw BinaryDecodingError(.truncated, offset: offset, "key tag") }
        let tag = (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(sealed[offset + $1]) }
        return (DataKeyID(slot: UInt32(slot), tag: tag), offset + 8)
    }

    /// The plaintext, or nil when the key that sealed it has been destroyed (its customer was
    /// erased). A box that does not open under a live key is damage, and throws.
    func open(_ sealed: [UInt8], associatedData: [UInt8], table: Table) throws -> [UInt8]? {
        try sealed.withUnsafeBytes { sealed in try associatedData.withUnsafeBytes { try open(sealed, associatedData: $0, table: table) } }
    }

    /// The same for a row where it lies (in LMDB's map, lent by `withValue`).
    func open(_ sealed: UnsafeRawBufferPointer, associatedData: UnsafeRawBufferPointer, table: Table) throws -> [UInt8]? {
        do {
            let (id, offset) = try Self.keyID(sealed)
            guard let key = sealing.keys.key(for: id) else { return nil }
            return try cipher.open(UnsafeRawBufferPointer(rebasing: sealed[offset...]), key: key, associatedData: associatedData)
        } catch {
            throw StoreCorruption(table: table.name, underlying: error)
        }
    }

    // MARK: - Change-log entries

    /// `[count] (bytes(owner pseudonym or empty) ‖ bytes(sealed or plain entry))*`.
    func sealEntries(
        _ entries: [ChangeEntry], table: Table, key: [UInt8], currentKey: ([UInt8]) throws -> (id: DataKeyID, key: AESGCM.Key)
    ) throws -> [UInt8] {
        var writer = BinaryWriter(capacity: 300 * entries.count)
        writer.write(count: entries.count)
        for (index, entry) in entries.enumerated() {
            let plain = ProfileFormat.encode(entry)
            guard let owner = Self.owner(of: entry) else {
                writer.write(bytes: [UInt8]())
                writer.write(bytes: plain)
                continue
            }
            let pseudonym = pseudonym(owner)
            let (id, dataKey) = try currentKey(pseudonym)
            writer.write(bytes: pseudonym)
            writer.write(bytes: try seal(plain, id, dataKey, associatedData: Self.entryData(table, key, index)))
        }
        return writer.bytes
    }

    /// The entries whose keys still exist, in order.
    func openEntries(_ bytes: [UInt8], table: Table, key: [UInt8]) throws -> [ChangeEntry] {
        var reader = BinaryReader(bytes)
        var entries: [ChangeEntry] = []
        let count = try reader.readCount(minimumItemSize: 2)
        for index in 0..<count {
            let owner = Array(try reader.readBytes())
            let body = Array(try reader.readBytes())
            let plain = owner.isEmpty ? body : try open(body, associatedData: Self.entryData(table, key, index), table: table)
            if let plain { entries.append(try decode(ChangeEntry.self, plain, table: table)) }
        }
        try reader.expectEnd()
        return entries
    }

    static func owner(of entry: ChangeEntry) -> [UInt8]? {
        switch entry.change {
        case .message(let delta): delta.subject.key
        case .unlink(let edge, _): edge.low.key
        case .erasure, .setting: nil
        }
    }

    private static func entryData(_ table: Table, _ key: [UInt8], _ index: Int) -> [UInt8] {
        [UInt8(table.rawValue)] + key + [UInt8(truncatingIfNeeded: index >> 8), UInt8(truncatingIfNeeded: index)]
    }
}

extension Sealing {
    /// The owner pseudonyms of a sealed log record's entries, with the keys that sealed them.
    static func entryOwners(_ bytes: [UInt8]) throws -> [(owner: [UInt8], key: DataKeyID)] {
        var reader = BinaryReader(bytes)
        var owners: [([UInt8], DataKeyID)] = []
        for _ in 0..<(try reader.readCount(minimumItemSize: 2)) {
            let owner = try reader.readBytes()
            let body = try reader.readBytes()
            if !owner.isEmpty { owners.append((Array(owner), try SealingSession.keyID(Array(body)).id)) }
        }
        return owners
    }
}

/// The pseudonyms a session computed or learned, both ways (owner identifier key ↔ pseudonym).
/// Most sessions are point reads that meet one or two: those stay in a short list, because two
/// dictionaries' allocations and hashing cost more than the lookups they save (a fifth of a
/// point read's reference counting, measured). Past `listLimit` the dictionaries take over.
struct PseudonymMemo {
    private static let listLimit = 4
    private var list: [(owner: [UInt8], pseudonym: [UInt8])] = []
    private var byOwner: [ByteKey: [UInt8]] = [:]
    private var byPseudonym: [ByteKey: [UInt8]] = [:]

    func pseudonym(of owner: [UInt8]) -> [UInt8]? {
        owner.withUnsafeBytes { pseudonym(ofBytes: $0) }
    }

    func pseudonym(ofBytes owner: UnsafeRawBufferPointer) -> [UInt8]? {
        if let entry = list.first(where: { $0.owner.withUnsafeBytes { $0.elementsEqual(owner) } }) { return entry.pseudonym }
        return byOwner.isEmpty ? nil : byOwner[ByteKey(Array(owner))]
    }

    func owner(of pseudonym: [UInt8]) -> [UInt8]? {
        if let entry = list.first(where: { $0.pseudonym == pseudonym }) { return entry.owner }
        return byPseudonym.isEmpty ? nil : byPseudonym[ByteKey(pseudonym)]
    }

    mutating func insert(owner: [UInt8], pseudonym: [UInt8]) {
        if list.count < Self.listLimit, byOwner.isEmpty {
            if !list.contains(where: { $0.pseudonym == pseudonym }) { list.append((owner, pseudonym)) }
            return
        }
        if !list.isEmpty {
            for entry in list {
                byOwner[ByteKey(entry.owner)] = entry.pseudonym
                byPseudonym[ByteKey(entry.pseudonym)] = entry.owner
            }
            list = []
        }
        byOwner[ByteKey(owner)] = pseudonym
        byPseudonym[ByteKey(pseudonym)] = owner
    }
}

/// The libcrypto contexts one session works with.
final class SessionContexts: Sendable {
    let cipher = AESGCMContext()
    let mac: HMACContext

    init(pseudonymKey: HMACKey) { mac = pseudonymKey.makeContext() }
}

/// Contexts kept between transactions: a read is one short transaction, and making and freeing
/// libcrypto contexts for each costs about as much as opening its row. At most `spareLimit`
/// are kept (about one per thread that reads or writes at once); a session takes its contexts
/// and gives them back under one lock each way.
///
/// A cipher context holds the schedule of the last key it used. When keys are destroyed,
/// `removeAll` frees the spares (libcrypto wipes them), and contexts taken before come back to
/// be freed, not kept: no destroyed key outlives its destruction in a kept context.
final class CipherPool: Sendable {
    static let spareLimit = 16
    private let pseudonymKey: HMACKey
    private let state = Mutex<(spares: [SessionContexts], generation: UInt64)>(([], 0))

    init(pseudonymKey: HMACKey) { self.pseudonymKey = pseudonymKey }

    /// Contexts, and the generation to give them back with.
    func take() -> (contexts: SessionContexts, generation: UInt64) {
        let (spare, generation) = state.withLock { state in (state.spares.popLast(), state.generation) }
        return (spare ?? SessionContexts(pseudonymKey: pseudonymKey), generation)
    }

    func give(_ contexts: SessionContexts, generation: UInt64) {
        state.withLock { state in
            if generation == state.generation && state.spares.count < Self.spareLimit { state.spares.append(contexts) }
        }
    }

    func removeAll() {
        state.withLock { state in
            state.spares.removeAll()
            state.generation &+= 1
        }
    }

    var spareCount: Int { state.withLock { $0.spares.count } }
}

/// Reads of sealed tables, giving the engine plain keys and values.
struct SealedReading: StoreReading {
    let base: any StoreReading
    let session: SealingSession

    func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? {
        switch table {
        case .documents:
            // A point read needs only the value: no owner row, no key to rebuild. The row is
            // opened where it lies in the map: its plaintext is the only copy made.
            return try session.withSealedKey(key) { sealedKey in
                if sealedKey.count == Sealing.pseudonymSize + 1, IdentifierRow.holds(sealedKey[Sealing.pseudonymSize]) {
                    return try record(sealedKey[Sealing.pseudonymSize], ofIdentifierRowAt: sealedKey)
                }
                if sealedKey.count > Sealing.pseudonymSize + 1, let row = RowKey(key), IdentifierRow.mayHold(row.partByte, row.suffix),
                    let inline = try identifierRow(Array(sealedKey.prefix(Sealing.pseudonymSize)))?.record(row.partByte, row.suffix)
                {
                    return inline
                }
                let opened = try base.withValue(.documents, sealedKey) { value in
                    guard let plain = try session.open(value, associatedData: sealedKey, table: .documents) else {
                        try checkErased(owner: sealedKey.prefix(Sealing.pseudonymSize))
                        return nil as [UInt8]?
                    }
                    return plain
                }
                guard let plain = opened ?? nil else { return nil }
                return sealedKey[Sealing.pseudonymSize] == DocumentPart.edge.rawValue ? try Self.splitEdge(plain).value : plain
            }
        case .changes:
            return try base.get(table, key).map { ChangeRecord.encode(try session.openEntries($0, table: table, key: key)) }
        case .ahead:
            guard let value = try base.get(table, key) else { return nil }
            return try session.openEntries(value, table: table, key: key).first.map { ProfileFormat.encode($0) }
        case .meta, .forget, .merkle:
            return try base.get(table, key)
        }
    }

    func scan(_ table: Table, from start: [UInt8], _ body: ([UInt8], [UInt8]) throws -> KithStore.ScanStep) throws {
        switch table {
        case .documents:
            // An identifier row comes before the owner's other rows and holds its first parts:
            // a start within them begins at the row, and skips what sorts before the start.
            let startKey = session.sealedKey(start)
            var sealedStart = startKey
            // The owner whose records may sort before the start (others follow it in pseudonym
            // order): its identifier row's records are compared with the start's plain key, its
            // other rows with the start's sealed key, as a scan from there would have found them.
            var startOwner: [UInt8]?
            // A ledger tail kept in an identifier row sorts after the owner's ledger rows: it is
            // given when the scan leaves the owner (or the table ends).
            var heldTail: (pseudonym: [UInt8], key: [UInt8], value: [UInt8])?
            if sealedStart.count > Sealing.pseudonymSize, sealedStart[Sealing.pseudonymSize] != Sealing.ownerPart {
                let (part, pseudonym) = (sealedStart[Sealing.pseudonymSize], Array(sealedStart.prefix(Sealing.pseudonymSize)))
                if IdentifierRow.holds(part) || part == DocumentPart.edge.rawValue {
                    startOwner = pseudonym
                    sealedStart = pseudonym + [Sealing.ownerPart]
                } else if part == IdentifierRow.ledgerPart, let row = try identifierRow(pseudonym), let tail = row.ledgerTail {
                    let tailKey = documentKey(row.owner, .ledger, LedgerBlock.tailSuffix)
                    if !tailKey.lexicographicallyPrecedes(start) { heldTail = (pseudonym, tailKey, tail) }
                }
            }
            var stopped = false
            func give(_ key: [UInt8], _ value: [UInt8]) throws -> KithStore.ScanStep {
                let step = try body(key, value)
                stopped = step == .stop
                return step
            }
            try base.scan(.documents, from: sealedStart) { key, value in
                if let tail = heldTail, !key.starts(with: tail.pseudonym) {
                    heldTail = nil
                    if try give(tail.key, tail.value) == .stop { return .stop }
                }
                guard key.count > Sealing.pseudonymSize else { return .next }
                guard key[Sealing.pseudonymSize] != Sealing.ownerPart else {
                    guard key.count == Sealing.pseudonymSize + 1 else { return .next }
                    let pseudonym = Array(key.prefix(Sealing.pseudonymSize))
                    guard let row = try identifierRow(pseudonym, stored: value) else { return .next }
                    for record in row.records {
                        let plainKey = documentPrefix(row.owner) + [record.part] + record.suffix
                        guard pseudonym != startOwner || !plainKey.lexicographicallyPrecedes(start) else { continue }
                        if record.part == IdentifierRow.ledgerPart {
                            heldTail = (pseudonym, plainKey, record.value)
                            continue
                        }
                        if try give(plainKey, record.value) == .stop { return .stop }
                    }
                    return .next
                }
                if let startOwner, key.starts(with: startOwner), key.lexicographicallyPrecedes(startKey) { return .next }
                guard let row = try openRow(key, value) else { return .next }
                return try give(row.key, row.value)
            }
            if !stopped, let tail = heldTail { _ = try body(tail.key, tail.value) }
        case .changes:
            try base.scan(table, from: start) { key, value in
                try body(key, ChangeRecord.encode(try session.openEntries(value, table: table, key: key)))
            }
        case .ahead:
            try base.scan(table, from: start) { key, value in
                guard let entry = try session.openEntries(value, table: table, key: key).first else { return .next }
                return try body(key, ProfileFormat.encode(entry))
            }
        case .meta, .forget, .merkle:
            try base.scan(table, from: start, body)
        }
    }

    /// For `documents`, within one part of one owner (`owner ‖ 0 ‖ part`), whose suffixes are
    /// stored plain (every part's but an edge's); the value is opened only when the key is
    /// within that part.
    func firstEntry(_ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (key: [UInt8], value: [UInt8]?)? {
        guard table == .documents else { return try base.firstEntry(table, from: start, sharing: prefix) }
        guard let part = RowKey(prefix), part.suffix.isEmpty, part.part != .edge, !IdentifierRow.holds(part.partByte), start.starts(with: prefix)
        else {
            preconditionFailure("a sealed first entry asked for outside one part of one owner (prefix of \(prefix.count) bytes)")
        }
        // The part's suffixes are stored plain: the start's sealed key is the prefix's and the rest.
        let sealedPrefix = session.sealedKey(prefix)
        guard let found = try base.firstEntry(.documents, from: sealedPrefix + start[prefix.count...], sharing: sealedPrefix) else {
            // None stored at or after the start: the ledger tail an identifier row keeps sorts
            // after every row of the part.
            guard part.partByte == IdentifierRow.ledgerPart,
                let tail = try identifierRow(Array(sealedPrefix.prefix(Sealing.pseudonymSize)))?.ledgerTail
            else { return nil }
            let tailKey = prefix + LedgerBlock.tailSuffix
            return tailKey.lexicographicallyPrecedes(start) ? nil : (tailKey, tail)
        }
        guard let sealed = found.value else { return nil }
        let plain = try session.open(sealed, associatedData: found.key, table: .documents)
        if plain == nil { try checkErased(owner: found.key.prefix(Sealing.pseudonymSize)) }
        return (prefix + found.key[sealedPrefix.count...], plain)
    }

    func lastKey(_ table: Table) throws -> [UInt8]? {
        precondition(table != .documents, "documents are not in plain key order when sealed")
        return try base.lastKey(table)
    }

    func count(_ table: Table) throws -> Int {
        precondition(table != .documents, "sealed documents hold owner rows besides the engine's")
        return try base.count(table)
    }

    /// An erasure's forget keys name the pseudonyms directly: one owner row read each, instead
    /// of hashing every identifier held.
    func identifiers(withForgetKeys wanted: Set<[UInt8]>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try wanted.sorted { $0.lexicographicallyPrecedes($1) }.compactMap { forgetKey in
            guard let owner = try ownerKey(Array(forgetKey.prefix(Sealing.pseudonymSize))), let identifier = Identifier(key: owner[...]),
                hasher.forgetKeyBytes(for: identifier) == forgetKey
            else { return nil }
            return identifier
        }
    }

    /// Sealed: the buckets one run each (`identifiers(inBucket:)`).
    func identifiers(inBuckets buckets: Range<Int>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try buckets.flatMap { try identifiers(inBucket: $0, hasher: hasher) }
    }

    /// Owners are in pseudonym order, and a pseudonym is a forget key's first bytes: a bucket's
    /// owners are one run of the table, read by their owner rows.
    func identifiers(inBucket bucket: Int, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        var identifiers: [Identifier] = []
        try base.scan(.documents, from: DigestTreeShape.firstBytes(ofBucket: bucket)) { key, _ in
            guard DigestTreeShape.bucket(of: key) == bucket else { return .stop }
            if key.count == Sealing.pseudonymSize + 1, key[Sealing.pseudonymSize] == Sealing.ownerPart,
                let owner = try ownerKey(Array(key.prefix(Sealing.pseudonymSize))), let identifier = Identifier(key: owner[...])
            {
                identifiers.append(identifier)
            }
            return .next
        }
        return identifiers
    }

    /// A row as the engine knows it, or nil when its key is destroyed.
    private func openRow(_ key: [UInt8], _ value: [UInt8]) throws -> (key: [UInt8], value: [UInt8])? {
        let pseudonym = Array(key.prefix(Sealing.pseudonymSize))
        guard let owner = try ownerKey(pseudonym) else { return nil }
        guard var plain = try session.open(value, associatedData: key, table: .documents) else {
            try checkErased(owner: pseudonym)
            return nil
        }
        let part = key[Sealing.pseudonymSize]
        var plainKey = documentPrefix(owner) + [part]
        if part == DocumentPart.edge.rawValue {
            let edge = try Self.splitEdge(plain)
            plainKey += edge.peer
            plain = edge.value
        } else {
            plainKey += key[(Sealing.pseudonymSize + 1)...]
        }
        return (plainKey, plain)
    }

    /// A row whose key is destroyed is an erased owner's, and its identifier row is sealed under
    /// a destroyed key too: an erasure deletes or seals again every row of the owner in one
    /// transaction, and each live row of an owner is sealed under the key its identifier row
    /// names. An identifier row that still opens means the row's key header was damaged: that
    /// is reported, not read as an erasure. (An identifier row's own header carries a check.)
    private func checkErased(owner pseudonym: some Collection<UInt8>) throws {
        guard let ownerRow = try base.get(.documents, Array(pseudonym) + [Sealing.ownerPart]) else { return }
        let id = try decode(ownerRow, table: .documents) { try SealingSession.identifierRowKeyID($0).id }
        guard session.sealing.keys.key(for: id) == nil else {
            throw StoreCorruption(
                table: Table.documents.name,
                underlying: BinaryDecodingError(.invalidValue, offset: 0, "a row's key header names no live key, and its owner's row does"))
        }
    }

    /// An edge's plaintext: the peer's identifier key, then the engine's value.
    static func splitEdge(_ plain: [UInt8]) throws -> (peer: ArraySlice<UInt8>, value: [UInt8]) {
        var reader = BinaryReader(plain)
        let peer = try reader.readBytes()
        return (peer, Array(plain[reader.offset...]))
    }

    /// The identifier key a pseudonym stands for: known from this transaction, or from its owner row.
    func ownerKey(_ pseudonym: [UInt8]) throws -> [UInt8]? {
        if let known = session.owner(of: pseudonym) { return known }
        guard let owner = try identifierRow(pseudonym)?.owner else { return nil }
        session.remember(owner: owner, of: pseudonym)
        return owner
    }

    /// `pseudonym`'s identifier row as this transaction sees it; nil when it has none, or when
    /// its key is destroyed (its owner was erased).
    func identifierRow(_ pseudonym: [UInt8]) throws -> IdentifierRow? {
        if let known = session.cachedIdentifierRow(pseudonym) { return known }
        let rowKey = pseudonym + [Sealing.ownerPart]
        let row = try rowKey.withUnsafeBytes { rowKeyBytes in
            try base.withValue(.documents, rowKeyBytes) { value in try openIdentifierRow(value, key: rowKeyBytes) } ?? nil
        }
        session.keepIdentifierRow(pseudonym, row, changed: false)
        return row
    }

    /// The record of `part` in the identifier row of the pseudonym `sealedKey` begins with: a
    /// write's from the rows it keeps, a read's from the row where it lies.
    private func record(_ part: UInt8, ofIdentifierRowAt sealedKey: UnsafeRawBufferPointer) throws -> [UInt8]? {
        if session.keepsIdentifierRows { return try identifierRow(Array(sealedKey.prefix(Sealing.pseudonymSize)))?.record(part) }
        // The row's key made on the stack, as the part's was.
        return try withUnsafeTemporaryAllocation(byteCount: Sealing.pseudonymSize + 1, alignment: 1) { rowKey in
            rowKey.copyMemory(from: UnsafeRawBufferPointer(rebasing: sealedKey.prefix(Sealing.pseudonymSize)))
            rowKey[Sealing.pseudonymSize] = Sealing.ownerPart
            let rowKeyBytes = UnsafeRawBufferPointer(rowKey)
            return try base.withValue(.documents, rowKeyBytes) { value in
                guard let plain = try session.openIdentifierRow(value, rowKey: rowKeyBytes) else { return nil }
                do {
                    return try IdentifierRow.record(part, in: plain)
                } catch {
                    throw StoreCorruption(table: Table.documents.name, underlying: error)
                }
            } ?? nil
        }
    }

    /// The same, for a row a scan has in hand.
    private func identifierRow(_ pseudonym: [UInt8], stored value: [UInt8]) throws -> IdentifierRow? {
        if let known = session.cachedIdentifierRow(pseudonym) { return known }
        let row = try (pseudonym + [Sealing.ownerPart]).withUnsafeBytes { key in
            try value.withUnsafeBytes { try openIdentifierRow($0, key: key) }
        }
        if let row { session.remember(owner: row.owner, of: pseudonym) }
        session.keepIdentifierRow(pseudonym, row, changed: false)
        return row
    }

    private func openIdentifierRow(_ sealed: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer) throws -> IdentifierRow? {
        guard let plain = try session.openIdentifierRow(sealed, rowKey: key) else { return nil }
        return try decode(plain, table: .documents) { try IdentifierRow(decoding: $0) }
    }
}

/// Writes of sealed tables (reads as `SealedReading`).
struct SealedWriting: StoreWriting, ReadingThrough {
    let base: any StoreWriting
    let session: SealingSession
    private var reading: SealedReading { SealedReading(base: base, session: session) }

    init(base: any StoreWriting, session: SealingSession) {
        self.base = base
        self.session = session
    }

    var readThrough: any StoreReading { reading }

    @discardableResult
    func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], mode: PutMode) throws -> Bool {
        switch table {
        case .documents:
            let row = RowKey(stored: key)
            let owner = Array(row.owner)
            let pseudonym = session.pseudonym(owner)
            if row.suffix.isEmpty, IdentifierRow.holds(row.partByte) {
                return try putRecord(row.partByte, [], value, mode: mode, pseudonym: pseudonym, owner: owner)
            }
            let sealedKey = session.sealedKey(key, separatorAt: row.ownerCount, ownerPseudonym: pseudonym)
            if row.part == .ledger, row.suffix.elementsEqual(LedgerBlock.tailSuffix) {
                if let put = try putLedgerTail(value, mode: mode, sealedKey: sealedKey, pseudonym: pseudonym, owner: owner) { return put }
            }
            // An edge goes in the identifier row when it is there already, or is new and the
            // row has room; an edge stored as a row of its own stays one.
            if row.part == .edge, !row.suffix.isEmpty {
                let peer = Array(row.suffix)
                let identifierRow = try reading.identifierRow(pseudonym)
                let inline = identifierRow?.record(DocumentPart.edge.rawValue, peer) != nil
                let room = (identifierRow?.edgeCount ?? 0) < IdentifierRow.inlineEdgeLimit
                if try inline || (room && base.get(.documents, sealedKey) == nil) {
                    return try putRecord(DocumentPart.edge.rawValue, peer, value, mode: mode, pseudonym: pseudonym, owner: owner)
                }
            }
            var plaintext = value
            if row.part == .edge {
                var writer = BinaryWriter(capacity: value.count + 40)
                writer.write(bytes: row.suffix)
                writer.write(raw: value)
                plaintext = writer.bytes
            }
            // `.insertOnly` is left to LMDB (no read first): a copy already stored wastes one seal,
            // and copies are rare. Its owner has a key already, so none is issued for it.
            let (id, dataKey) = try currentKey(pseudonym, owner: owner)
            return try base.put(.documents, sealedKey, try session.seal(plaintext, id, dataKey, associatedData: sealedKey), mode: mode)
        case .changes:
            return try base.put(table, key, try sealEntries(ChangeRecord.decode(value), table, key), mode: mode)
        case .ahead:
            return try base.put(table, key, try sealEntries([decode(ChangeEntry.self, value, table: table)], table, key), mode: mode)
        case .meta, .forget, .merkle:
            return try base.put(table, key, value, mode: mode)
        }
    }

    /// Stores `owner`'s identifier row deflated (`IdentifierRow.deflated`) when ingest left it
    /// plain and that is shorter, sealed again under the key that sealed it. A row this
    /// transaction changed (a sweep that dropped some of its data) is stored deflated when it is
    /// sealed at commit. Records do not change.
    func deflateIdentifierRow(of owner: [UInt8]) throws -> Bool {
        let pseudonym = session.pseudonym(owner)
        if session.changedIdentifierRow(pseudonym) {
            guard let row = try reading.identifierRow(pseudonym), IdentifierRow.deflated(row.encoded()) != nil else { return false }
            session.deflateAtCommit(pseudonym)
            return true
        }
        let rowKey = pseudonym + [Sealing.ownerPart]
        guard let stored = try base.get(.documents, rowKey), let plain = try session.openIdentifierRow(stored, rowKey: rowKey),
            let deflated = IdentifierRow.deflated(plain)
        else { return false }
        let id = try SealingSession.identifierRowKeyID(stored).id
        guard let key = session.sealing.keys.key(for: id) else { return false }
        try base.put(.documents, rowKey, try session.sealIdentifierRow(deflated, id, key, rowKey: rowKey), mode: .upsert)
        return true
    }

    /// Deletes a run of rows and puts them back in key order: LMDB splits a page in the middle
    /// when a row goes inside it, so rows written in random key order (pseudonyms) leave pages
    /// about two-thirds full, and fewer still once the sweep has shrunk their values in place;
    /// rows put in ascending order into a gap fill each page before the next (a page split for
    /// a row at its end keeps all it can on the left). Values are the same bytes, sealed under
    /// the same keys (a box's associated data is its row's key).
    /// Pseudonyms are a forget key's first bytes, so a bucket's owners are one run of the table.
    func repack(from start: [UInt8], beforeBucket bucket: Int, atMost limit: Int) throws -> (rows: Int, next: [UInt8]?) {
        precondition(limit > 0 && (0...DigestTreeShape.bucketCount).contains(bucket), "repacking \(limit) rows before bucket \(bucket)")
        var end = bucket < DigestTreeShape.bucketCount ? DigestTreeShape.firstBytes(ofBucket: bucket) : nil
        if let bucketStart = end, !start.lexicographicallyPrecedes(bucketStart) { end = nil }
        var rows: [(key: [UInt8], value: [UInt8])] = []
        var next: [UInt8]?
        try base.scan(.documents, from: start) { key, value in
            guard rows.count < limit, end.map({ key.lexicographicallyPrecedes($0) }) ?? true else {
                next = key
                return .stop
            }
            rows.append((key, value))
            return .next
        }
        for row in rows { try base.delete(.documents, row.key) }
        for row in rows { try base.put(.documents, row.key, row.value, mode: .upsert) }
        return (rows.count, next)
    }

    func keepsLedgerTailWithIdentifierRow(of owner: [UInt8]) throws -> Bool {
        try reading.identifierRow(session.pseudonym(owner))?.ledgerTail != nil
    }

    /// Puts an identifier's ledger tail block in its identifier row when it is at most
    /// `IdentifierRow.inlineLedgerTailLimit` bytes (a tail stored alone moves in), and returns
    /// whether it was put; or takes it out of the row when it has grown past that and returns
    /// nil: the caller stores it as a row of its own.
    private func putLedgerTail(_ value: [UInt8], mode: PutMode, sealedKey: [UInt8], pseudonym: [UInt8], owner: [UInt8]) throws -> Bool? {
        let tail = LedgerBlock.tailSuffix
        let identifierRow = try reading.identifierRow(pseudonym)
        let inline = identifierRow?.ledgerTail != nil
        guard value.count <= IdentifierRow.inlineLedgerTailLimit else {
            if var identifierRow, inline {
                identifierRow.set(IdentifierRow.ledgerPart, tail, nil)
                session.keepIdentifierRow(pseudonym, identifierRow, changed: true)
            }
            return nil
        }
        if !inline {
            if mode == .insertOnly, try base.get(.documents, sealedKey) != nil { return false }
            try base.delete(.documents, sealedKey)
        }
        return try putRecord(IdentifierRow.ledgerPart, tail, value, mode: mode, pseudonym: pseudonym, owner: owner)
    }

    /// Puts a record in `pseudonym`'s identifier row, sealed with the row at commit (`finish`).
    private func putRecord(_ part: UInt8, _ suffix: [UInt8], _ value: [UInt8], mode: PutMode, pseudonym: [UInt8], owner: [UInt8]) throws -> Bool {
        precondition(mode != .append, "an append to an identifier row")
        _ = try currentKey(pseudonym, owner: owner)
        var identifierRow = try reading.identifierRow(pseudonym) ?? IdentifierRow(owner: owner)
        if mode == .insertOnly, identifierRow.record(part, suffix) != nil { return false }
        identifierRow.set(part, suffix, value)
        session.keepIdentifierRow(pseudonym, identifierRow, changed: true)
        return true
    }

    /// Each entry sealed as it is, without encoding the record and decoding it again (`put`).
    func putChanges(_ entries: [ChangeEntry], at key: [UInt8], mode: PutMode) throws {
        try base.put(.changes, key, try sealEntries(entries, .changes, key), mode: mode)
    }

    @discardableResult
    func delete(_ table: Table, _ key: [UInt8]) throws -> Bool {
        guard table == .documents else { return try base.delete(table, key) }
        let sealedKey = session.sealedKey(key)
        let pseudonym = Array(sealedKey.prefix(Sealing.pseudonymSize))
        session.deletedFrom.insert(pseudonym)
        if let row = RowKey(key), IdentifierRow.mayHold(row.partByte, row.suffix) {
            if var identifierRow = try reading.identifierRow(pseudonym), identifierRow.set(row.partByte, Array(row.suffix), nil) {
                session.keepIdentifierRow(pseudonym, identifierRow, changed: true)
                return true
            }
            // An index, head or view is never a row of its own; an edge or a ledger tail may be.
            guard !IdentifierRow.holds(row.partByte) else { return false }
        }
        return try base.delete(.documents, sealedKey)
    }

    /// Before commit: the identifier rows this transaction changed are sealed and written; then
    /// an owner row whose owner has nothing left, in it or beside it, is deleted, and its key
    /// retired — it sealed the owner's identifier, which must not outlive the owner's data.
    func finish() throws {
        for (pseudonym, row, deflated) in session.takeChangedIdentifierRows() {
            guard let row else { continue }
            let rowKey = pseudonym + [Sealing.ownerPart]
            let (id, key) = try currentKey(pseudonym, owner: row.owner)
            let plaintext = row.encoded()
            let stored = deflated ? IdentifierRow.deflated(plaintext) ?? plaintext : plaintext
            try base.put(.documents, rowKey, try session.sealIdentifierRow(stored, id, key, rowKey: rowKey), mode: .upsert)
        }
        for pseudonym in session.deletedFrom.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            let rowKey = pseudonym + [Sealing.ownerPart]
            var others = false
            try base.scan(.documents, from: rowKey + [0]) { key, _ in
                others = key.starts(with: pseudonym)
                return .stop
            }
            guard !others, try reading.identifierRow(pseudonym)?.isEmpty ?? true, let row = try base.get(.documents, rowKey) else { continue }
            let id = try decode(row, table: .documents) { try SealingSession.identifierRowKeyID($0).id }
            try base.delete(.documents, rowKey)
            session.setKeyInUse(pseudonym, nil)
            session.dropIdentifierRow(pseudonym)
            if !session.retired.contains(id) {
                session.retired.append(id)
                try base.put(.meta, Sealing.retiredPrefix + Self.idBytes(id), [], mode: .upsert)
            }
        }
    }

    private func sealEntries(_ entries: [ChangeEntry], _ table: Table, _ key: [UInt8]) throws -> [UInt8] {
        try session.sealEntries(entries, table: table, key: key) { pseudonym in
            guard let owner = session.owner(of: pseudonym) else { preconditionFailure("a pseudonym this transaction did not compute") }
            return try currentKey(pseudonym, owner: owner)
        }
    }

    /// The key `pseudonym`'s new rows are sealed with: the one its owner row was sealed with,
    /// or, for an owner without one (new, or erased in this transaction), a newly issued key,
    /// recorded by writing the owner row under it.
    private func currentKey(_ pseudonym: [UInt8], owner: [UInt8]) throws -> (id: DataKeyID, key: AESGCM.Key) {
        if let known = session.keyInUse(pseudonym) { return known }
        let rowKey = pseudonym + [Sealing.ownerPart]
        if let row = try base.get(.documents, rowKey) {
            let id = try decode(row, table: .documents) { try SealingSession.identifierRowKeyID($0).id }
            if let key = session.sealing.keys.key(for: id) {
                session.setKeyInUse(pseudonym, (id, key))
                return (id, key)
            }
        }
        let (id, key) = try session.sealing.keys.issue()
        session.issued.append(id)
        // Written now, not at commit: scans and erasures in this transaction find owners by these rows.
        let row = IdentifierRow(owner: owner)
        try base.put(.documents, rowKey, try session.sealIdentifierRow(row.encoded(), id, key, rowKey: rowKey), mode: .upsert)
        session.keepIdentifierRow(pseudonym, row, changed: false)
        session.setKeyInUse(pseudonym, (id, key))
        return (id, key)
    }

    /// Retires every key that sealed data of the erased `identifiers` (destroyed once the
    /// erasure commits) and seals again, under new keys, whatever of theirs survived the erasure
    /// (data newer than it): their rows, and their entries in the log and in `ahead`.
    func retireKeys(of identifiers: [Identifier]) throws {
        let pseudonyms = Set(identifiers.map { session.pseudonym($0.key) })
        var retired: Set<DataKeyID> = []
        // The owners of a log record's entries, and their keys, are readable without opening them.
        var records: [(Table, [UInt8], [UInt8])] = []
        for table in [Table.changes, .ahead] {
            try base.scan(table, from: []) { key, value in
                let owned = try Sealing.entryOwners(value).filter { pseudonyms.contains($0.owner) }
                guard !owned.isEmpty else { return .next }
                retired.formUnion(owned.map(\.key))
                records.append((table, key, try reading.get(table, key) ?? []))
                return .next
            }
        }
        var surviving: [([UInt8], [UInt8])] = []
        for identifier in identifiers {
            try reading.scan(.documents, prefix: documentPrefix(identifier.key)) { key, value in
                surviving.append((key, value))
                return .next
            }
            let pseudonym = session.pseudonym(identifier.key)
            var rows: [[UInt8]] = []
            try base.scan(.documents, from: pseudonym) { key, value in
                guard key.starts(with: pseudonym) else { return .stop }
                rows.append(key)
                retired.insert(try SealingSession.keyID(value).id)
                return .next
            }
            for row in rows { try base.delete(.documents, row) }
            session.setKeyInUse(pseudonym, nil)
            session.dropIdentifierRow(pseudonym)
        }
        for id in retired.sorted(by: { ($0.slot, $0.tag) < ($1.slot, $1.tag) }) {
            try base.put(.meta, Sealing.retiredPrefix + Self.idBytes(id), [], mode: .upsert)
        }
        session.retired += retired
        for (key, value) in surviving { try put(.documents, key, value, mode: .upsert) }
        for (table, key, plain) in records where !(table == .ahead && plain.isEmpty) { try put(table, key, plain, mode: .upsert) }
    }

    static func idBytes(_ id: DataKeyID) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: id.slot >> (24 - 8 * $0)) } + KeySlot.bigEndian(id.tag)
    }

    static func id(fromBytes bytes: ArraySlice<UInt8>) -> DataKeyID? {
        guard bytes.count == 12 else { return nil }
        let start = bytes.startIndex
        return DataKeyID(
            slot: bytes[start..<(start + 4)].reduce(0) { $0 << 8 | UInt32($1) }, tag: bytes[(start + 4)...].reduce(0) { $0 << 8 | UInt64($1) })
    }
}
