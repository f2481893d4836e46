import KithCRDT

/// Everything a replica holds under one forget key, as anti-entropy ships it: the identifier's
/// own records (head, links, ledger rows — the state its profile is derived from; the derived
/// index and view are rebuilt by the receiver) and the forget-set entry, if the identifier was
/// ever erased. A receiver joins it into its own state (`ProfileStore.join`), so it repairs what
/// a change log can no longer provide. See docs/replication.md ("Anti-entropy").
public struct DocumentState: Equatable, Sendable {
    /// One stored record: its part (`DocumentPart` raw value), the key suffix after the part
    /// (an edge's peer identifier key, a ledger row's messageId), and the encoded value.
    public struct Row: Equatable, Sendable {
        public var part: UInt8
        public var suffix: [UInt8]
        public var value: [UInt8]

        public init(part: UInt8, suffix: [UInt8], value: [UInt8]) {
            self.part = part
            self.suffix = suffix
            self.value = value
        }
    }

    /// The forget key (HMAC of the identifier under the cluster's forget secret): the key space
    /// of the digest tree, and all that is left of an erased identifier.
    public var forgetKey: [UInt8]
    /// Nil when nothing but the forget entry is held.
    public var identifier: Identifier?
    /// The forget-set record, if the identifier was ever erased.
    public var forgotten: ForgetRecord?
    public var rows: [Row]

    /// The erasure time, if the identifier was ever erased.
    public var forgottenAt: Int64? { forgotten?.time }

    public static let forgetKeySize = 32

    public init(forgetKey: [UInt8], identifier: Identifier?, forgotten: ForgetRecord?, rows: [Row]) {
        self.forgetKey = forgetKey
        self.identifier = identifier
        self.forgotten = forgotten
        self.rows = rows
    }
}

extension DocumentState: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(raw: forgetKey)
        writer.write(bool: identifier != nil)
        identifier?.encode(to: &writer)
        writer.write(bool: forgotten != nil)
        if let forgotten {
            writer.write(signed: forgotten.time)
            writer.write(varint: forgotten.origin)
            writer.write(varint: forgotten.sequence)
        }
        writer.write(sequence: rows) { w, row in
            w.write(byte: row.part)
            w.write(bytes: row.suffix)
            w.write(bytes: row.value)
        }
    }

    public init(from reader: inout BinaryReader) throws {
        forgetKey = try reader.readRaw(Self.forgetKeySize)
        identifier = try reader.readBool() ? try Identifier(from: &reader) : nil
        if try reader.readBool() {
            let time = try reader.readSigned()
            let offset = reader.offset
            let origin = try reader.readVarint(), sequence = try reader.readVarint()
            guard sequence != 0 || origin == 0 else { throw BinaryDecodingError(.invalidValue, offset: offset, "an erasure's origin and sequence") }
            forgotten = ForgetRecord(time: time, origin: origin, sequence: sequence)
        } else {
            forgotten = nil
        }
        rows = try reader.readSequence(minimumItemSize: 3) { r in
            Row(part: try r.readByte(), suffix: Array(try r.readBytes()), value: Array(try r.readBytes()))
        }
        if identifier == nil, !rows.isEmpty {
            throw BinaryDecodingError(.invalidValue, offset: reader.offset, "document rows without an identifier")
        }
    }
}
