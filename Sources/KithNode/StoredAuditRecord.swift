import KithCRDT

/// A stored read: `[version][time][subjects][shape key]`.
enum StoredAuditRecord {
    static let version: UInt8 = 2

    static func encode(time: Int64, subjects: [[UInt8]], shapeKey: [UInt8]) -> [UInt8] {
        var writer = BinaryWriter(capacity: 16 + 34 * subjects.count + shapeKey.count)
        writer.write(byte: version)
        writer.write(signed: time)
        writer.write(sequence: subjects) { w, subject in w.write(bytes: subject) }
        writer.write(bytes: shapeKey)
        return writer.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> (time: Int64, subjects: [[UInt8]], shapeKey: [UInt8]) {
        var reader = try reader(bytes)
        let time = try reader.readSigned()
        let subjects = try reader.readSequence { r in Array(try r.readBytes()) }
        let shapeKey = Array(try reader.readBytes())
        try reader.expectEnd()
        return (time, subjects, shapeKey)
    }

    /// Only the subjects, without copying the rest: what the index and the sweep need from each
    /// of many records.
    static func subjects(ofEncoded bytes: [UInt8]) throws -> [ArraySlice<UInt8>] {
        var reader = try reader(bytes)
        _ = try reader.readSigned()
        return try reader.readSequence { r in try r.readBytes() }
    }

    private static func reader(_ bytes: [UInt8]) throws -> BinaryReader {
        var reader = BinaryReader(bytes)
        guard try reader.readByte() == version else { throw BinaryDecodingError(.unsupportedVersion, offset: 0, "audit record") }
        return reader
    }
}

/// Records waiting for the audit's writer: a bounded queue that keeps a batch whose commit failed
/// (in order, ahead of newer records) instead of dropping it. When it is full the audit is
/// failing, and reads must be refused rather than served unaudited.
struct AuditQueue<Element> {
    let limit: Int
    private(set) var pending: [Element] = []

    init(limit: Int) { self.limit = limit }

    /// False when the queue is full: the read may not be served.
    mutating func append(_ element: Element) -> Bool {
        guard pending.count < limit else { return false }
        pending.append(element)
        return true
    }

    mutating func take() -> [Element] {
        defer { pending.removeAll(keepingCapacity: true) }
        return pending
    }

    /// A batch that could not be committed goes back ahead of what arrived since.
    mutating func putBack(_ batch: [Element]) {
        pending = batch + pending
    }
}

/// A read on its way to the audit's writer, its shape already encoded by the reading thread:
/// the writer then handles only bytes this read owns, instead of releasing strings that every
/// reading thread shares (whose reference counts would bounce between cores).
struct PendingAuditRecord {
    var time: Int64
    var subjects: [[UInt8]]
    var shape: [UInt8]
}
