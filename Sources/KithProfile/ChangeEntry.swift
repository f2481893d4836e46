import KithCRDT

/// One entry of a node's change log: what changed, where it came from, and its place in the log.
public struct ChangeEntry: Equatable, Sendable {
    public enum Change: Equatable, Sendable {
        case message(ProfileDelta)
        case unlink(LinkEdge, LWWStamp)
        /// Forget keys only: the log never carries an erased customer's identifiers.
        case erasure(forgetKeys: [[UInt8]], time: Int64)
        /// A cluster setting (a webhook subscription, its delivery state): a last-writer-wins
        /// register under `name`, replicated as changes are. No customer's data: settings never
        /// reach the change feed. An empty value removes the setting (and stays, as a tombstone).
        case setting(name: String, value: [UInt8], stamp: LWWStamp)
    }

    /// The position in this node's log.
    public var sequence: UInt64
    /// The node that first accepted the change, and its position in that node's log.
    public var origin: UInt64
    public var originSequence: UInt64
    public var change: Change

    public init(sequence: UInt64, origin: UInt64, originSequence: UInt64, change: Change) {
        self.sequence = sequence
        self.origin = origin
        self.originSequence = originSequence
        self.change = change
    }
}

extension ChangeEntry {
    /// The identifiers whose documents this change writes: a message's subject and the
    /// identifiers it links, an unlink's two ends. An erasure names only forget keys.
    public var identifiersWritten: [Identifier] {
        switch change {
        case .message(let delta): [delta.subject] + delta.links
        case .unlink(let edge, _): [edge.low, edge.high]
        case .erasure, .setting: []
        }
    }
}

extension ChangeEntry: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(varint: sequence)
        writer.write(varint: origin)
        writer.write(varint: originSequence)
        switch change {
        case .message(let delta):
            writer.write(byte: 1)
            delta.encode(to: &writer)
        case .unlink(let edge, let stamp):
            writer.write(byte: 2)
            edge.encode(to: &writer)
            stamp.encode(to: &writer)
        case .erasure(let keys, let time):
            writer.write(byte: 3)
            writer.write(sequence: keys) { w, key in w.write(bytes: key) }
            writer.write(signed: time)
        case .setting(let name, let value, let stamp):
            writer.write(byte: 4)
            writer.write(string: name)
            writer.write(bytes: value)
            stamp.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws {
        sequence = try reader.readVarint()
        origin = try reader.readVarint()
        originSequence = try reader.readVarint()
        let kindOffset = reader.offset
        switch try reader.readByte() {
        case 1: change = .message(try ProfileDelta(from: &reader))
        case 2: change = .unlink(try LinkEdge(from: &reader), try LWWStamp(from: &reader))
        case 3:
            let keys = try reader.readSequence { r in Array(try r.readBytes()) }
            change = .erasure(forgetKeys: keys, time: try reader.readSigned())
        case 4: change = .setting(name: try reader.readString(), value: Array(try reader.readBytes()), stamp: try LWWStamp(from: &reader))
        default: throw BinaryDecodingError(.unknownTag, offset: kindOffset, "change kind")
        }
    }

    /// Whether the change goes ahead of a backlog when a peer catches up: erasures, and messages
    /// carrying consent decisions (so that a withdrawal takes effect before the rest arrives).
    public var travelsAhead: Bool {
        switch change {
        case .erasure: true
        case .message(let delta): !delta.consent.isEmpty
        case .unlink, .setting: false
        }
    }
}
