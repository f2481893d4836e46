import KithCRDT
import KithJSON

/// The binary encodings of the profile model. Top-level records that are stored or shipped
/// (heads, views, deltas) are written with `ProfileFormat.encode`, which puts the format version
/// first so a later version can read (or refuse) what an earlier one wrote.
public enum ProfileFormat {
    public static let version: UInt8 = 3

    public static func encode<T: BinaryCodable>(_ value: T) -> [UInt8] {
        var writer = BinaryWriter(capacity: 256)
        writer.write(byte: version)
        value.encode(to: &writer)
        return writer.bytes
    }

    public static func decode<T: BinaryCodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        var reader = BinaryReader(bytes)
        let found = try reader.readByte()
        guard found == version else { throw BinaryDecodingError(.unsupportedVersion, offset: 0, "format \(found)") }
        let value = try T(from: &reader)
        try reader.expectEnd()
        return value
    }
}

extension BinaryWriter {
    mutating func write(optionalSigned value: Int64?) {
        write(bool: value != nil)
        if let value { write(signed: value) }
    }

    mutating func write<T: BinaryCodable>(optional value: T?) {
        write(bool: value != nil)
        if let value { value.encode(to: &self) }
    }
}

extension BinaryReader {
    mutating func readOptionalSigned() throws -> Int64? {
        try readBool() ? try readSigned() : nil
    }

    /// A time inside `MessageTimes.representable` (message times, and nodes' clock readings on
    /// the wire), so that the arithmetic on it cannot overflow.
    public mutating func readTime() throws -> Int64 {
        let offset = self.offset
        let time = try readSigned()
        guard MessageTimes.representable.contains(time) else { throw BinaryDecodingError(.invalidValue, offset: offset, "time outside ±10^15 ms") }
        return time
    }

    public mutating func readOptionalTime() throws -> Int64? {
        try readBool() ? try readTime() : nil
    }

    /// One event's revenue inside `Revenue.limits`: sums of them cannot overflow.
    mutating func readOptionalRevenue() throws -> Int64? {
        let offset = self.offset
        guard let micros = try readOptionalSigned() else { return nil }
        guard Revenue.isRepresentable(micros) else { throw BinaryDecodingError(.invalidValue, offset: offset, "revenue outside ±10^18 micro-units") }
        return micros
    }

    mutating func readOptional<T: BinaryCodable>(_ type: T.Type = T.self) throws -> T? {
        try readBool() ? try T(from: &self) : nil
    }

    mutating func readObject() throws -> JSONObject {
        let offset = self.offset
        guard case .object(let object) = try JSONValue(from: &self) else {
            throw BinaryDecodingError(.invalidValue, offset: offset, "expected an object")
        }
        return object
    }
}

extension MessageType: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.write(byte: code) }

    public init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        guard let type = MessageType(code: try reader.readByte()) else { throw BinaryDecodingError(.unknownTag, offset: offset, "message type") }
        self = type
    }
}

extension MessageTimes: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(signed: receivedAt)
        writer.write(optionalSigned: timestamp)
        writer.write(optionalSigned: originalTimestamp)
        writer.write(optionalSigned: sentAt)
    }

    /// Refuses times outside `MessageTimes.representable` (a damaged row or a peer's bad frame
    /// must not reach the skew arithmetic).
    public init(from reader: inout BinaryReader) throws {
        let received = try reader.readTime()
        self.init(
            timestamp: try reader.readOptionalTime(), originalTimestamp: try reader.readOptionalTime(),
            sentAt: try reader.readOptionalTime(), receivedAt: received)
    }
}

/// An event record's type byte: the message type's code, and this bit when the client's own
/// timestamp follows the event time (records written before it existed never set it).
let clientTimestampFlag: UInt8 = 0x80

extension EventRecord: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(string: messageId)
        writer.write(byte: type.code | (clientTimestamp == nil ? 0 : clientTimestampFlag))
        writer.write(string: name)
        writer.write(signed: time)
        if let clientTimestamp { writer.write(signed: clientTimestamp) }
        writer.write(string: channel)
        writer.write(optionalSigned: revenueMicros)
        properties.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws {
        let messageId = try reader.readString()
        let (type, hasClientTimestamp) = try Self.readType(&reader)
        let name = try reader.readString()
        let time = try reader.readSigned()
        let clientTimestamp = hasClientTimestamp ? try reader.readTime() : nil
        self.init(
            messageId: messageId, type: type, name: name, time: time, channel: try reader.readString(),
            revenueMicros: try reader.readOptionalRevenue(), properties: try RawJSON(from: &reader), clientTimestamp: clientTimestamp)
    }

    /// The type byte: the message type, and whether the client's timestamp follows the time.
    static func readType(_ reader: inout BinaryReader) throws -> (type: MessageType, hasClientTimestamp: Bool) {
        let offset = reader.offset
        let byte = try reader.readByte()
        guard let type = MessageType(code: byte & ~clientTimestampFlag) else {
            throw BinaryDecodingError(.unknownTag, offset: offset, "message type")
        }
        return (type, byte & clientTimestampFlag != 0)
    }
}

extension LedgerEntry: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        type.encode(to: &writer)
        writer.write(string: name)
        writer.write(signed: time)
        writer.write(optionalSigned: revenueMicros)
    }

    public init(from reader: inout BinaryReader) throws {
        self.init(
            type: try MessageType(from: &reader), name: try reader.readString(), time: try reader.readSigned(),
            revenueMicros: try reader.readOptionalRevenue())
    }
}

extension ConsentRegister: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(bool: granted)
        stamp.encode(to: &writer)
        writer.write(string: source)
    }

    public init(from reader: inout BinaryReader) throws {
        self.init(granted: try reader.readBool(), stamp: try LWWStamp(from: &reader), source: try reader.readString())
    }
}

extension SourceHead: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        traits.encode(to: &writer)
        consent.encode(to: &writer)
        groups.encode(to: &writer)
        writer.write(sequence: recent) { w, record in record.encode(to: &w) }
        writer.write(count: aggregates.count)
        for (key, aggregate) in aggregates.pairs {
            writer.write(string: key)
            writer.write(signed: aggregate.count)
            writer.write(signed128: aggregate.revenueMicros)
        }
        writer.write(signed: messageCount)
        writer.write(optionalSigned: firstSeen)
        writer.write(optionalSigned: lastSeen)
    }

    public init(from reader: inout BinaryReader) throws {
        self.init()
        traits = try CRDTMap(from: &reader)
        consent = try CRDTMap(from: &reader)
        groups = try ORSet(from: &reader)
        recent = try reader.readSequence(minimumItemSize: 8) { r in try EventRecord(from: &r) }
        let pairs = try reader.readSequence(minimumItemSize: 3) { r in
            (try r.readString(), EventAggregate(count: try r.readSigned(), revenueMicros: try r.readSigned128()))
        }
        guard let sorted = SortedDictionary(ascending: pairs.map(\.0), pairs.map(\.1)) else {
            throw BinaryDecodingError(.invalidValue, offset: reader.offset, "aggregate names not strictly ascending")
        }
        aggregates = sorted
        messageCount = try reader.readSigned()
        firstSeen = try reader.readOptionalSigned()
        lastSeen = try reader.readOptionalSigned()
    }
}

extension ProfileDelta: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(string: messageId)
        type.encode(to: &writer)
        subject.encode(to: &writer)
        writer.write(string: channel)
        times.encode(to: &writer)
        JSONValue.object(traits).encode(to: &writer)
        writer.write(sequence: consent) { w, decision in
            w.write(string: decision.category)
            w.write(bool: decision.granted)
        }
        writer.write(optional: event)
        writer.write(sequence: links) { w, identifier in identifier.encode(to: &w) }
        writer.write(bool: groupId != nil)
        if let groupId { writer.write(string: groupId) }
    }

    public init(from reader: inout BinaryReader) throws {
        self.init(
            messageId: try reader.readString(), type: try MessageType(from: &reader), subject: try Identifier(from: &reader),
            channel: try reader.readString(), times: try MessageTimes(from: &reader), traits: try reader.readObject(),
            consent: try reader.readSequence(minimumItemSize: 2) { r in
                ConsentDecision(category: try r.readString(), granted: try r.readBool())
            },
            event: try reader.readOptional(EventRecord.self),
            links: try reader.readSequence(minimumItemSize: 2) { r in try Identifier(from: &r) },
            groupId: try reader.readBool() ? try reader.readString() : nil)
    }
}

extension LinkEdge: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        low.encode(to: &writer)
        high.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        let low = try Identifier(from: &reader), high = try Identifier(from: &reader)
        guard low < high, let edge = LinkEdge(low, high) else { throw BinaryDecodingError(.invalidValue, offset: offset, "edge order") }
        self = edge
    }
}

extension LinkState: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(sequence: adds.keys.sorted()) { w, stamp in
            stamp.encode(to: &w)
            w.write(string: adds[stamp]!)
        }
        writer.write(optional: removedAt)
    }

    public init(from reader: inout BinaryReader) throws {
        let pairs = try reader.readSequence(minimumItemSize: 3) { r in (try LWWStamp(from: &r), try r.readString()) }
        let adds = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        guard adds.count == pairs.count else { throw BinaryDecodingError(.invalidValue, offset: reader.offset, "link adds") }
        self.init(adds: adds, removedAt: try reader.readOptional(LWWStamp.self))
    }
}

extension ProfileView: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        canonical.encode(to: &writer)
        writer.write(sequence: members) { w, member in member.encode(to: &w) }
        head.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws {
        self.init(
            canonical: try Identifier(from: &reader),
            members: try reader.readSequence(minimumItemSize: 2) { r in try Identifier(from: &r) },
            head: try SourceHead(from: &reader))
    }
}
