/// For each origin node, the highest sequence number of that node's changes a replica holds.
///
/// Every replica appends one origin's changes to its log in increasing origin sequence, so
/// "holds origin X up to n" means "holds every change of X numbered n or less that still matters"
/// (a change whose subject was later erased may be missing; the erasure dominates it). Sequences
/// of one origin may have gaps: they are positions in the origin's own log, which also holds
/// changes it relayed.
public struct VersionVector: Equatable, Sendable, CustomStringConvertible {
    public private(set) var sequences = SortedDictionary<UInt64, UInt64>()

    public init() {}

    public init(_ pairs: [UInt64: UInt64]) {
        sequences = SortedDictionary(pairs.filter { $0.value > 0 })
    }

    public subscript(origin: UInt64) -> UInt64 {
        get { sequences[origin] ?? 0 }
        set { sequences[origin] = newValue == 0 ? nil : newValue }
    }

    /// Whether the change `(origin, sequence)` is already covered.
    public func covers(origin: UInt64, sequence: UInt64) -> Bool { sequence <= self[origin] }

    /// Raises `origin` to `sequence` if that is higher.
    public mutating func advance(origin: UInt64, to sequence: UInt64) {
        if sequence > self[origin] { self[origin] = sequence }
    }

    /// Raises every origin to `other`'s sequence where that is higher (the join).
    public mutating func merge(_ other: VersionVector) {
        for (origin, sequence) in other.sequences.pairs { advance(origin: origin, to: sequence) }
    }

    /// The origins of which `other` holds changes this vector does not cover.
    public func lacking(_ other: VersionVector) -> [UInt64] {
        other.sequences.pairs.filter { self[$0.0] < $0.1 }.map(\.0)
    }

    /// Whether this vector covers everything `other` does.
    public func covers(_ other: VersionVector) -> Bool { lacking(other).isEmpty }

    public var description: String {
        "[" + sequences.pairs.map { "\(String($0, radix: 16)):\($1)" }.joined(separator: ",") + "]"
    }
}

extension VersionVector: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(count: sequences.count)
        for (origin, sequence) in sequences.pairs {
            writer.write(varint: origin)
            writer.write(varint: sequence)
        }
    }

    public init(from reader: inout BinaryReader) throws {
        let start = reader.offset
        let count = try reader.readCount(minimumItemSize: 2)
        var origins: [UInt64] = [], sequences: [UInt64] = []
        origins.reserveCapacity(count)
        sequences.reserveCapacity(count)
        for _ in 0..<count {
            origins.append(try reader.readVarint())
            let sequence = try reader.readVarint()
            guard sequence > 0 else { throw BinaryDecodingError(.invalidValue, offset: start, "version vector holds a zero") }
            sequences.append(sequence)
        }
        guard let sorted = SortedDictionary(ascending: origins, sequences) else {
            throw BinaryDecodingError(.invalidValue, offset: start, "version vector origins out of order")
        }
        self.sequences = sorted
    }
}
