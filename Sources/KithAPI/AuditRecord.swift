import KithCRDT
import KithCrypto
import KithPolicy

/// One profile read, as the audit keeps it: who, for what, which profile (by keyed hash only),
/// and which fields were returned, masked and withheld — names, never values.
public struct AuditRecord: Equatable, Sendable {
    public var time: Int64
    /// Keyed hashes of the profile's member identifiers at the time of the read.
    public var subjects: [[UInt8]]
    public var shape: AuditShape

    public var principal: String { shape.principal }
    public var purpose: String { shape.purpose }
    public var node: String { shape.node }
    public var resource: String { shape.resource }
    public var returned: [String] { shape.returned }
    public var masked: [String] { shape.masked }
    public var withheld: [Withheld] { shape.withheld }

    public init(time: Int64, principal: String, purpose: String, node: String, resource: String, subjects: [[UInt8]], outcome: ReadOutcome) {
        self.time = time
        self.subjects = subjects
        shape = AuditShape(
            principal: principal, purpose: purpose, node: node, resource: resource,
            returned: outcome.returned, masked: outcome.masked, withheld: outcome.withheld)
    }

    package init(time: Int64, subjects: [[UInt8]], shape: AuditShape) {
        self.time = time
        self.subjects = subjects
        self.shape = shape
    }
}

/// The part of a read that repeats from read to read — principal, purpose, node, resource and
/// the field names returned, masked and withheld — stored once under a digest of its encoding.
/// A stored read is then its time, its subjects and that digest: tens of bytes instead of
/// hundreds. A shape holds no personal data (names of fields and principals, no values, no
/// subjects), so shapes are kept when the reads that used them expire.
public struct AuditShape: Hashable, Sendable {
    public var principal: String
    public var purpose: String
    public var node: String
    /// The resource read: `profile`, `traits`, `identifiers`, `events`, `consent`, `export`.
    public var resource: String
    public var returned: [String]
    public var masked: [String]
    public var withheld: [Withheld]

    package static let version: UInt8 = 1

    package func encoded() -> [UInt8] {
        var writer = BinaryWriter(capacity: 256)
        writer.write(byte: Self.version)
        for text in [principal, purpose, node, resource] { writer.write(string: text) }
        writer.write(sequence: returned) { w, field in w.write(string: field) }
        writer.write(sequence: masked) { w, field in w.write(string: field) }
        writer.write(sequence: withheld) { w, item in
            w.write(string: item.field)
            w.write(string: item.reason.rawValue)
            for optional in [item.category, item.consentCategory] {
                w.write(bool: optional != nil)
                if let optional { w.write(string: optional) }
            }
        }
        return writer.bytes
    }

    /// The key a shape is stored under: 128 bits of SHA-256 of its encoding.
    package static func key(ofEncoded bytes: [UInt8]) -> [UInt8] { Array(Crypto.sha256(bytes).prefix(16)) }

    package init(
        principal: String, purpose: String, node: String, resource: String, returned: [String], masked: [String], withheld: [Withheld]
    ) {
        self.principal = principal
        self.purpose = purpose
        self.node = node
        self.resource = resource
        self.returned = returned
        self.masked = masked
        self.withheld = withheld
    }

    package init(decoding bytes: [UInt8]) throws {
        var reader = BinaryReader(bytes)
        guard try reader.readByte() == Self.version else { throw BinaryDecodingError(.unsupportedVersion, offset: 0, "audit shape") }
        principal = try reader.readString()
        purpose = try reader.readString()
        node = try reader.readString()
        resource = try reader.readString()
        returned = try reader.readSequence { r in try r.readString() }
        masked = try reader.readSequence { r in try r.readString() }
        withheld = try reader.readSequence { r in
            let field = try r.readString()
            let offset = r.offset
            guard let reason = WithholdReason(rawValue: try r.readString()) else {
                throw BinaryDecodingError(.invalidValue, offset: offset, "withhold reason")
            }
            let category = try r.readBool() ? try r.readString() : nil
            let consentCategory = try r.readBool() ? try r.readString() : nil
            return Withheld(field: field, reason: reason, category: category, consentCategory: consentCategory)
        }
        try reader.expectEnd()
    }
}
