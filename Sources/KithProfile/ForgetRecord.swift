import KithCRDT

/// What the forget set keeps of an erasure under one forget key: its time `T` (everything about
/// the person dated at or before it is gone) and which change made it — the origin node and
/// its sequence there — so that a node can tell when every member holds it and the record may
/// be compacted (docs/replication.md, "Compacting forget entries").
///
/// Two erasures of one person join to the later; at the same time, to the greater change, so
/// that every replica keeps the same bytes whatever order they arrived in.
public struct ForgetRecord: Equatable, Sendable, Comparable {
    public var time: Int64
    /// The node the erasure was made on, and its sequence there (from 1); both 0 when not
    /// known (a record written before records named their change: never compacted).
    public var origin: UInt64
    public var sequence: UInt64

    public init(time: Int64, origin: UInt64, sequence: UInt64) {
        precondition(sequence != 0 || origin == 0, "an erasure from node \(origin) without a sequence")
        self.time = time
        self.origin = origin
        self.sequence = sequence
    }

    /// Whether the change that made it is known.
    public var hasOrigin: Bool { sequence != 0 }

    public static func < (a: ForgetRecord, b: ForgetRecord) -> Bool {
        (a.time, a.origin, a.sequence) < (b.time, b.origin, b.sequence)
    }

    /// The record two erasures of one forget key leave.
    public func joined(with other: ForgetRecord) -> ForgetRecord { max(self, other) }
}

extension ForgetRecord: BinaryCodable {
    /// The time, then (when known) the origin and sequence; a record of the time alone is what
    /// stores wrote before records named their change.
    public func encode(to writer: inout BinaryWriter) {
        writer.write(signed: time)
        guard hasOrigin else { return }
        writer.write(varint: origin)
        writer.write(varint: sequence)
    }

    /// Reads a record that runs to the end of `reader` (a stored forget-set value).
    public init(from reader: inout BinaryReader) throws {
        time = try reader.readSigned()
        guard !reader.isAtEnd else {
            (origin, sequence) = (0, 0)
            return
        }
        let offset = reader.offset
        origin = try reader.readVarint()
        sequence = try reader.readVarint()
        guard sequence != 0 else { throw BinaryDecodingError(.invalidValue, offset: offset, "an erasure's origin and sequence") }
    }
}
