import KithCRDT
import KithProfile

/// Everything nodes say to each other. Each travels as one authenticated frame
/// (docs/wire-format.md); this is the frame's payload.
public enum PeerMessage: Equatable, Sendable {
    case membership(MembershipMessage)
    /// "Send me what I lack from your log after `cursor`": the sender's position in the
    /// receiver's log, the sender's version vector, and how many bytes of changes it wants.
    /// `request` numbers the sender's pulls; the replies echo it, so the sender knows which
    /// pull a reply answers (a quorum read counts only replies to pulls it sent).
    case pull(cursor: UInt64, versions: VersionVector, budget: UInt32, request: UInt64, cleared: Int64? = nil)
    /// A reply to a pull: the changes in the sender's log positions (`from`, `through`] that the
    /// puller lacked, and whether more follow; `ahead`: erasures from later in the log the puller
    /// lacks and consent decisions, sent ahead of the backlog so that they take effect first.
    case changes(from: UInt64, through: UInt64, entries: [ChangeEntry], more: Bool, ahead: [ChangeEntry], request: UInt64)
    /// Changes the sender itself accepted, pushed right after commit. `previous`: the receiver
    /// may apply them only if it already holds the sender's changes up to that sequence.
    case push(previous: UInt64, entries: [ChangeEntry])
    /// "I hold your own changes through origin sequence `through`, durably": the answer to a
    /// push, which is how a write waiting for more replicas learns that they have it.
    case acknowledge(through: UInt64)
    /// Anti-entropy, from the node comparing trees: "here are my digests of these tree nodes
    /// (forget-key prefixes); send me the children of those whose digest differs from yours".
    case digestRequest(request: UInt64, nodes: [DigestEntry])
    /// The answer: for each requested node that differs, the sender's children with a non-zero
    /// digest (under a bucket, its forget keys).
    case digestReply(request: UInt64, children: [DigestChildren])
    /// Document states to join (the sender's, for keys whose digests differed), and the keys
    /// whose states the sender wants back (empty in the answer).
    case documents(request: UInt64, states: [DocumentState], wanted: [[UInt8]])
    /// A reply to a pull whose cursor is behind what the sender's log still holds: its entries
    /// through `through` are gone (truncated once every member had read them). The sender
    /// compares trees with the puller instead, and answers its pulls from the log once that
    /// comparison has ended (docs/replication.md, "Log truncation").
    case logTruncated(through: UInt64, request: UInt64, dropThrough: Int64? = nil)
    /// A reply to a pull from behind the sender's truncated log once a tree comparison has
    /// brought the puller everything the sender's log held through `through`: the puller's
    /// cursor moves from `from` to `through`. The puller's own log then lacks what the comparison
    /// brought, so it serves its log only from there on (docs/replication.md, "Log truncation").
    case logResumed(from: UInt64, through: UInt64, request: UInt64)
    /// A scoped site asks a core for its customers (docs/replication.md, "Scope"): its scope and
    /// purposes (from its configuration; the core decides with them), the summary of its report
    /// (`HeldDocument.summary`), and a page of the report — every document it holds with the
    /// digest of its state, in pages of `ReportPage` — unless the core took the same report
    /// before (then no page). `cleared`: how far the site dropped its old data when a core
    /// quarantined it, as pulls say it (docs/replication.md, "Compacting forget entries").
    case siteSync(request: UInt64, scope: Scope, purposes: [String], summary: Digest128, page: ReportPage?, cleared: Int64? = nil)
    /// The core's answer to a site sync: the projected document states of components the site
    /// holds that differ there, component by component (joined, or replaced where a join cannot
    /// take a field back), and documents to `purge` (out of the site's scope; the site keeps
    /// those its log still names). `more`: the core has more to send. `reportWanted`: the sync
    /// sent only a summary the core does not know (it restarted): the site sends its report.
    /// `dropThrough`: the core compacted forget records while the site did not count, and takes
    /// nothing from it until it has dropped everything dated at or before this time (as
    /// `logTruncated` tells a member that pulls); such an answer carries nothing else.
    case siteUpdate(
        request: UInt64, components: [[DocumentState]], purge: [Identifier], more: Bool, reportWanted: Bool = false, dropThrough: Int64? = nil)

    /// The frame type tag.
    public var tag: UInt8 {
        switch self {
        case .membership: 1
        case .pull: 2
        case .changes: 3
        case .push: 4
        case .acknowledge: 5
        case .digestRequest: 6
        case .digestReply: 7
        case .documents: 8
        case .logTruncated: 9
        case .logResumed: 10
        case .siteSync: 11
        case .siteUpdate: 12
        }
    }

    public static let knownTags: ClosedRange<UInt8> = 1...12

    /// The most tree nodes one digest request names, and forget keys one documents message wants.
    public static let maximumNodesPerRequest = 256
}

extension PeerMessage {
    public func encodePayload() -> [UInt8] {
        var writer = BinaryWriter(capacity: 64)
        switch self {
        case .membership(let message): message.encode(to: &writer)
        case .pull(let cursor, let versions, let budget, let request, let cleared):
            writer.write(varint: cursor)
            versions.encode(to: &writer)
            writer.write(varint: UInt64(budget))
            writer.write(varint: request)
            writer.write(optionalTime: cleared)
        case .changes(let from, let through, let entries, let more, let ahead, let request):
            writer.write(varint: from)
            writer.write(varint: through)
            writer.write(sequence: entries) { w, entry in entry.encode(to: &w) }
            writer.write(bool: more)
            writer.write(sequence: ahead) { w, entry in entry.encode(to: &w) }
            writer.write(varint: request)
        case .push(let previous, let entries):
            writer.write(varint: previous)
            writer.write(sequence: entries) { w, entry in entry.encode(to: &w) }
        case .acknowledge(let through):
            writer.write(varint: through)
        case .digestRequest(let request, let nodes):
            writer.write(varint: request)
            writer.write(sequence: nodes) { w, node in node.encode(to: &w) }
        case .digestReply(let request, let children):
            writer.write(varint: request)
            writer.write(sequence: children) { w, node in
                w.write(bytes: node.node)
                w.write(sequence: node.children) { w, child in child.encode(to: &w) }
            }
        case .documents(let request, let states, let wanted):
            writer.write(varint: request)
            writer.write(sequence: states) { w, state in state.encode(to: &w) }
            writer.write(sequence: wanted) { w, key in w.write(raw: key) }
        case .logTruncated(let through, let request, let dropThrough):
            writer.write(varint: through)
            writer.write(varint: request)
            writer.write(optionalTime: dropThrough)
        case .logResumed(let from, let through, let request):
            writer.write(varint: from)
            writer.write(varint: through)
            writer.write(varint: request)
        case .siteSync(let request, let scope, let purposes, let summary, let page, let cleared):
            writer.write(varint: request)
            scope.encode(to: &writer)
            writer.write(sequence: purposes) { w, purpose in w.write(string: purpose) }
            writer.write(raw: summary.bytes)
            writer.write(bool: page != nil)
            page?.encode(to: &writer)
            writer.write(optionalTime: cleared)
        case .siteUpdate(let request, let components, let purge, let more, let reportWanted, let dropThrough):
            writer.write(varint: request)
            writer.write(sequence: components) { w, states in w.write(sequence: states) { w, state in state.encode(to: &w) } }
            writer.write(sequence: purge) { w, identifier in identifier.encode(to: &w) }
            writer.write(bool: more)
            writer.write(bool: reportWanted)
            writer.write(optionalTime: dropThrough)
        }
        return writer.bytes
    }

    /// Decodes a payload strictly: every byte accounted for, counts checked against the input
    /// before anything is allocated.
    public init(tag: UInt8, payload: [UInt8]) throws {
        var reader = BinaryReader(payload)
        switch tag {
        case 1: self = .membership(try MembershipMessage(from: &reader))
        case 2:
            let cursor = try reader.readVarint()
            let versions = try VersionVector(from: &reader)
            let budget = try reader.readVarint()
            guard budget <= UInt64(UInt32.max) else { throw BinaryDecodingError(.invalidValue, offset: reader.offset, "budget") }
            let request = try reader.readVarint()
            self = .pull(cursor: cursor, versions: versions, budget: UInt32(budget), request: request, cleared: try reader.readOptionalTime())
        case 3:
            let from = try reader.readVarint(), through = try reader.readVarint()
            guard from <= through else { throw BinaryDecodingError(.invalidValue, offset: reader.offset, "changes range") }
            let entries = try reader.readSequence(minimumItemSize: 4) { r in try ChangeEntry(from: &r) }
            let more = try reader.readBool()
            let ahead = try reader.readSequence(minimumItemSize: 4) { r in try ChangeEntry(from: &r) }
            guard ahead.allSatisfy(\.travelsAhead) else {
                throw BinaryDecodingError(.invalidValue, offset: reader.offset, "only erasures and consent decisions travel ahead")
            }
            self = .changes(from: from, through: through, entries: entries, more: more, ahead: ahead, request: try reader.readVarint())
        case 4:
            let previous = try reader.readVarint()
            self = .push(previous: previous, entries: try reader.readSequence(minimumItemSize: 4) { r in try ChangeEntry(from: &r) })
        case 5: self = .acknowledge(through: try reader.readVarint())
        case 6:
            let request = try reader.readVarint()
            let nodes = try reader.readSequence(minimumItemSize: 17) { r in
                let offset = r.offset
                let node = try DigestEntry(from: &r)
                guard DigestTreeShape.isNode(node.key) else { throw BinaryDecodingError(.invalidValue, offset: offset, "not a tree node") }
                return node
            }
            guard nodes.count <= Self.maximumNodesPerRequest else {
                throw BinaryDecodingError(.invalidValue, offset: reader.offset, "too many tree nodes")
            }
            self = .digestRequest(request: request, nodes: nodes)
        case 7:
            let request = try reader.readVarint()
            let children = try reader.readSequence(minimumItemSize: 2) { r in try DigestChildren(from: &r) }
            guard children.count <= Self.maximumNodesPerRequest else {
                throw BinaryDecodingError(.invalidValue, offset: reader.offset, "too many tree nodes")
            }
            self = .digestReply(request: request, children: children)
        case 8:
            let request = try reader.readVarint()
            let states = try reader.readSequence(minimumItemSize: DocumentState.forgetKeySize + 3) { r in try DocumentState(from: &r) }
            let wanted = try reader.readSequence(minimumItemSize: DocumentState.forgetKeySize) { r in try r.readRaw(DocumentState.forgetKeySize) }
            guard wanted.count <= Self.maximumNodesPerRequest else {
                throw BinaryDecodingError(.invalidValue, offset: reader.offset, "too many keys wanted")
            }
            self = .documents(request: request, states: states, wanted: wanted)
        case 9:
            let through = try reader.readVarint()
            let request = try reader.readVarint()
            self = .logTruncated(through: through, request: request, dropThrough: try reader.readOptionalTime())
        case 10:
            let from = try reader.readVarint(), through = try reader.readVarint()
            guard from < through else { throw BinaryDecodingError(.invalidValue, offset: reader.offset, "resumed range") }
            self = .logResumed(from: from, through: through, request: try reader.readVarint())
        case 11:
            let request = try reader.readVarint()
            let scope = try Scope(from: &reader)
            let purposes = try reader.readSequence { r in try r.readString() }
            let summary = Digest128(bytes: try reader.readRaw(Digest128.byteCount))
            let page = try reader.readBool() ? try ReportPage(from: &reader) : nil
            self = .siteSync(request: request, scope: scope, purposes: purposes, summary: summary, page: page, cleared: try reader.readOptionalTime())
        case 12:
            let request = try reader.readVarint()
            let components = try reader.readSequence { r in
                try r.readSequence(minimumItemSize: DocumentState.forgetKeySize + 3) { r in try DocumentState(from: &r) }
            }
            let purge = try reader.readSequence(minimumItemSize: 2) { r in try Identifier(from: &r) }
            let more = try reader.readBool(), reportWanted = try reader.readBool()
            self = .siteUpdate(
                request: request, components: components, purge: purge, more: more, reportWanted: reportWanted,
                dropThrough: try reader.readOptionalTime())
        default: throw BinaryDecodingError(.unknownTag, offset: 0, "message type \(tag)")
        }
        try reader.expectEnd()
    }
}

/// The children of one tree node, as a digest reply carries them.
public struct DigestChildren: Equatable, Sendable {
    public var node: [UInt8]
    public var children: [DigestEntry]

    public init(node: [UInt8], children: [DigestEntry]) {
        self.node = node
        self.children = children
    }

    init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        let node = Array(try reader.readBytes())
        self.node = node
        guard DigestTreeShape.isNode(node) else { throw BinaryDecodingError(.invalidValue, offset: offset, "not a tree node") }
        children = try reader.readSequence(minimumItemSize: 17) { r in
            let childOffset = r.offset
            let entry = try DigestEntry(from: &r)
            // A range's children are buckets in it, a bucket's the forget keys in it.
            guard DigestTreeShape.isChild(entry.key, of: node) else {
                throw BinaryDecodingError(.invalidValue, offset: childOffset, "a child outside its tree node")
            }
            return entry
        }
    }
}

extension DigestEntry {
    func encode(to writer: inout BinaryWriter) {
        writer.write(bytes: key)
        digest.encode(to: &writer)
    }

    /// A tree node or a forget key, and its digest; where it may stand is for the caller to check.
    init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        let key = Array(try reader.readBytes())
        guard key.count <= DocumentState.forgetKeySize else {
            throw BinaryDecodingError(.invalidValue, offset: offset, "tree key of \(key.count) bytes")
        }
        self.init(key: key, digest: try Digest128(from: &reader))
    }
}

extension Member: BinaryCodable {
    static let scopedBit: UInt8 = 0x80

    public func encode(to writer: inout BinaryWriter) {
        writer.write(bigEndian: id)
        writer.write(string: name)
        writer.write(string: address)
        writer.write(string: api)
        // The high bit of the role byte says the member is scoped (protocol version 4).
        writer.write(byte: role.rawValue | (scoped ? Self.scopedBit : 0))
        writer.write(varint: incarnation)
        writer.write(byte: status.rawValue)
    }

    public init(from reader: inout BinaryReader) throws {
        id = try reader.readBigEndianUInt64()
        name = try reader.readString()
        address = try reader.readString()
        api = try reader.readString()
        let offset = reader.offset
        let roleByte = try reader.readByte()
        guard let role = MemberRole(rawValue: roleByte & ~Self.scopedBit), roleByte & Self.scopedBit == 0 || role == .edge else {
            throw BinaryDecodingError(.invalidValue, offset: offset, "role")
        }
        self.role = role
        scoped = roleByte & Self.scopedBit != 0
        incarnation = try reader.readVarint()
        guard let status = MemberStatus(rawValue: try reader.readByte()) else {
            throw BinaryDecodingError(.invalidValue, offset: reader.offset - 1, "status")
        }
        self.status = status
        guard name.utf8.count <= 64, address.utf8.count <= 300, api.utf8.count <= 300 else {
            throw BinaryDecodingError(.invalidValue, offset: offset, "member name or address too long")
        }
    }
}

extension MembershipMessage: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        sender.encode(to: &writer)
        writer.write(signed: sentAt)
        switch kind {
        case .ping(let sequence):
            writer.write(byte: 1)
            writer.write(varint: sequence)
        case .ack(let sequence, let echo):
            writer.write(byte: 2)
            writer.write(varint: sequence)
            writer.write(optionalTime: echo)
        case .pingRequest(let sequence, let target):
            writer.write(byte: 3)
            writer.write(varint: sequence)
            writer.write(bigEndian: target)
        case .join: writer.write(byte: 4)
        case .welcome(let echo):
            writer.write(byte: 5)
            writer.write(optionalTime: echo)
        case .leave: writer.write(byte: 6)
        }
        writer.write(sequence: updates) { w, member in member.encode(to: &w) }
    }

    public init(from reader: inout BinaryReader) throws {
        sender = try Member(from: &reader)
        sentAt = try reader.readTime()
        let offset = reader.offset
        switch try reader.readByte() {
        case 1: kind = .ping(try reader.readVarint())
        case 2: kind = .ack(try reader.readVarint(), echo: try reader.readOptionalTime())
        case 3: kind = .pingRequest(try reader.readVarint(), target: try reader.readBigEndianUInt64())
        case 4: kind = .join
        case 5: kind = .welcome(echo: try reader.readOptionalTime())
        case 6: kind = .leave
        default: throw BinaryDecodingError(.unknownTag, offset: offset, "membership message kind")
        }
        updates = try reader.readSequence(minimumItemSize: 15) { r in try Member(from: &r) }
    }
}

extension BinaryWriter {
    /// An optional time: a bool, then the signed varint.
    fileprivate mutating func write(optionalTime time: Int64?) {
        write(bool: time != nil)
        if let time { write(signed: time) }
    }
}
