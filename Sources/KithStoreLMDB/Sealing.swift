import KithCRDT
import KithCompression
import KithCrypto
import KithProfile
import KithStore

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
        if checked { writer.write(raw: Self.bigEndian(Checksum.crc32(writer.bytes))) }
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

    /// A header check as stored: the CRC-32, big-endian.
    private static func bigEndian(_ check: UInt32) -> [UInt8] {
        (0..<headerCheckSize).map { UInt8(truncatingIfNeeded: check >> (24 - 8 * UInt32($0))) }
    }

    /// Which key sealed an identifier row, its header checked; the offset is the box's.
    static func identifierRowKeyID(_ sealed: [UInt8]) throws -> (id: DataKeyID, offset: Int) {
        try sealed.withUnsafeBytes { try identifierRowKeyID($0) }
    }

    static func identifierRowKeyID(_ sealed: UnsafeRawBufferPointer) throws -> (id: DataKeyID, offset: Int) {
        let (id, header) = try keyID(sealed)
        guard sealed.count >= header + headerCheckSize else { throw BinaryDecodingError(.truncated, offset: header, "key header check") }
        // Read where the row lies: a point read checks every identifier row it opens.
        let stored = (0..<headerCheckSize).reduce(UInt32(0)) { $0 << 8 | UInt32(sealed[header + $1]) }
        guard stored == Checksum.crc32(UnsafeRawBufferPointer(rebasing: sealed[..<header])) else {
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
        writer.write(raw: bigEndian(Checksum.crc32(sealed[..<header])))
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
