import KithCRDT
import KithCrypto
import KithProfile
import KithReplication
import KithTestSupport
import Testing

/// HMAC-SHA256 keys by id, as the node uses them (KithNode's ClusterKeys, without the file handling).
struct TestKeys: FrameAuthenticator {
    var keys: [UInt8: [UInt8]]
    var sendingKeyId: UInt8
    func knows(keyId: UInt8) -> Bool { keys[keyId] != nil }
    func tag(keyId: UInt8, _ message: [UInt8]) -> [UInt8] { Crypto.hmacSHA256(key: keys[keyId]!, message: message) }
    func verify(keyId: UInt8, _ message: [UInt8], tag: ArraySlice<UInt8>) -> Bool {
        keys[keyId].map { Crypto.constantTimeEquals(Crypto.hmacSHA256(key: $0, message: message), Array(tag)) } ?? false
    }
}

let keyA = [UInt8](repeating: 1, count: 32), keyB = [UInt8](repeating: 2, count: 32)
let nonce = [UInt8](repeating: 5, count: 16)
let member = Member(id: 7, name: "n7", address: "127.0.0.1:7946", role: .edge, incarnation: 3)

/// A connection's first frames: the peer's hello (tagged with zeros), then a ping tagged with our nonce.
func connectionBytes(_ keys: TestKeys) -> (hello: [UInt8], ping: [UInt8]) {
    var encoder = FrameEncoder(authenticator: keys, sender: 7)
    let hello = encoder.encode(
        type: Frame.helloType, payload: Hello(nonce: nonce, forgetKeyFingerprint: Array(repeating: 0, count: 32), address: "a:1").payload)
    encoder.receiverNonce = nonce
    let message = PeerMessage.membership(MembershipMessage(sender: member, kind: .ping(1), updates: [member]))
    return (hello, encoder.encode(type: message.tag, payload: message.encodePayload()))
}

func decodeAll(_ bytes: [UInt8], keys: TestKeys) -> Result<[Frame], FrameError> {
    var decoder = FrameDecoder(authenticator: keys, nonce: nonce)
    decoder.append(bytes)
    var frames: [Frame] = []
    do {
        while let frame = try decoder.next() { frames.append(frame) }
    } catch { return .failure(error) }
    return .success(frames)
}

@Suite("Peer frames")
struct FrameTests {
    let keys = TestKeys(keys: [1: keyA], sendingKeyId: 1)

    @Test func authenticFramesDecodeInOrder() throws {
        let (hello, ping) = connectionBytes(keys)
        let frames = try decodeAll(hello + ping, keys: keys).get()
        #expect(frames.map(\.type) == [Frame.helloType, 1])
        #expect(frames.map(\.sequence) == [1, 2])
        #expect(try Hello(payload: frames[0].payload).address == "a:1")
        #expect(
            try PeerMessage(tag: 1, payload: frames[1].payload) == .membership(MembershipMessage(sender: member, kind: .ping(1), updates: [member])))
    }

    @Test func everyTamperedByteIsRefused() {
        let (hello, ping) = connectionBytes(keys)
        let bytes = hello + ping
        for index in bytes.indices {
            var tampered = bytes
            tampered[index] ^= 0x01
            // Refused, or (for a length byte) still waiting for bytes that never come: never delivered.
            if case .success(let frames) = decodeAll(tampered, keys: keys) { #expect(frames.count < 2, "byte \(index)") }
        }
    }

    @Test func replayedAndForeignFramesAreRefused() {
        let (hello, ping) = connectionBytes(keys)
        #expect(decodeAll(hello + ping + ping, keys: keys) == .failure(.badSequence(expected: 3, got: 2)))
        // A frame recorded on a connection with another nonce fails authentication here.
        var other = FrameDecoder(authenticator: keys, nonce: [UInt8](repeating: 9, count: 16))
        other.append(hello + ping)
        #expect(throws: FrameError.authenticationFailed) { while try other.next() != nil {} }
        #expect(decodeAll(ping, keys: keys) == .failure(.badSequence(expected: 1, got: 2)))
        #expect(decodeAll(connectionBytes(TestKeys(keys: [1: keyB], sendingKeyId: 1)).hello, keys: keys) == .failure(.authenticationFailed))
        #expect(decodeAll(Array("GET / HTTP/1.1\r\n".utf8), keys: keys) == .failure(.badMagic))
    }

    @Test func lengthIsCheckedBeforeThePayloadArrives() {
        var encoder = FrameEncoder(authenticator: keys, sender: 7)
        let big = encoder.encode(type: Frame.helloType, payload: [UInt8](repeating: 0, count: 100))
        var decoder = FrameDecoder(authenticator: keys, nonce: nonce, maximumPayload: 64)
        decoder.append(big.prefix(Frame.headerSize))
        #expect(throws: FrameError.tooLarge(100)) { try decoder.next() }
    }

    @Test func keysRotateWithoutDowntime() throws {
        // Install: both keys accepted, the old one still sends.
        let installed = TestKeys(keys: [1: keyA, 2: keyB], sendingKeyId: 1)
        let used = TestKeys(keys: [1: keyA, 2: keyB], sendingKeyId: 2)
        let removed = TestKeys(keys: [2: keyB], sendingKeyId: 2)
        // A node still on the old key talks to one that installed the new one, and back.
        #expect(try decodeAll(connectionBytes(keys).hello, keys: installed).get().count == 1)
        #expect(try decodeAll(connectionBytes(used).hello + connectionBytes(used).ping, keys: installed).get().count == 2)
        #expect(try decodeAll(connectionBytes(used).hello, keys: removed).get().count == 1)
        #expect(decodeAll(connectionBytes(keys).hello, keys: removed) == .failure(.unknownKey(1)))
    }
}

@Suite("Peer messages")
struct PeerMessageTests {
    @Test func everyKindRoundTrips() throws {
        let delta = WorkloadGenerator.deltas(seed: 3, customers: 5, count: 1)[0]
        let entry = ChangeEntry(sequence: 4, origin: 9, originSequence: 3, change: .message(delta))
        let erasure = ChangeEntry(sequence: 5, origin: 9, originSequence: 4, change: .erasure(forgetKeys: [[1, 2, 3]], time: 77))
        let messages: [PeerMessage] = [
            .membership(MembershipMessage(sender: member, kind: .pingRequest(4, target: 8), updates: [member])),
            .membership(MembershipMessage(sender: member, kind: .welcome(echo: 1_760_000_000_123), updates: [], sentAt: 1_760_000_000_456)),
            .membership(MembershipMessage(sender: member, kind: .welcome(echo: nil), updates: [])),
            .membership(MembershipMessage(sender: member, kind: .ack(7, echo: -5), updates: [], sentAt: 9)),
            .membership(MembershipMessage(sender: member, kind: .ack(7, echo: nil), updates: [])),
            .pull(cursor: 12, versions: VersionVector([1: 4, 9: 2]), budget: 65_536, request: 77),
            .changes(from: 3, through: 5, entries: [entry, erasure], more: true, ahead: [erasure], request: 77),
            .push(previous: 2, entries: [entry]),
            .acknowledge(through: 1_234_567),
            .logTruncated(through: 9_876, request: 78),
            .logResumed(from: 12, through: 9_876, request: 79),
            .pull(cursor: 12, versions: VersionVector(), budget: 1, request: 80, cleared: -1_760_000_000_000),
            .logTruncated(through: 0, request: 81, dropThrough: 1_760_000_000_000),
        ]
        for message in messages { #expect(try PeerMessage(tag: message.tag, payload: message.encodePayload()) == message) }
        #expect(throws: (any Error).self) { try PeerMessage(tag: 9, payload: messages[7].encodePayload() + [0]) }
        // A scoped member's flag travels in its role byte; a scoped core is refused.
        let site = Member(id: 8, name: "kiosk", address: "127.0.0.1:7947", role: .edge, scoped: true, incarnation: 2)
        let gossip = PeerMessage.membership(MembershipMessage(sender: site, kind: .ping(1), updates: [site, member]))
        #expect(try PeerMessage(tag: gossip.tag, payload: gossip.encodePayload()) == gossip)
        var scopedCore = gossip.encodePayload()
        let roleAt = 8 + 1 + 5 + 1 + 14 + 1
        #expect(scopedCore[roleAt] == 0x81, "the role byte of the scoped edge sender")
        scopedCore[roleAt] = 0x80
        #expect(throws: (any Error).self) { try PeerMessage(tag: gossip.tag, payload: scopedCore) }
        // Site syncs: a scope of every clause, and an update of two components and a purge.
        let u1 = Identifier(kind: .userId, value: "u-1")!, a1 = Identifier(kind: .anonymousId, value: "a-1")!
        let scope = Scope.only([
            .trait(name: "homeStore", value: .string("leeds-1")), .identifiers([u1, a1]), .placement(5...1 << 60),
            .seen(node: 8, withinMillis: 86_400_000),
        ])
        let state = DocumentState(
            forgetKey: Array(repeating: 3, count: DocumentState.forgetKeySize), identifier: u1, forgotten: nil,
            rows: [DocumentState.Row(part: 1, suffix: [], value: [1, 2, 3])])
        let syncs: [PeerMessage] = [
            .siteSync(
                request: 5, scope: scope, purposes: ["analytics", "support"], summary: Digest128(low: 1, high: 2),
                page: ReportPage(after: min(u1, a1), documents: [HeldDocument(identifier: max(u1, a1), digest: state.contentDigest)], last: false)),
            .siteSync(request: 6, scope: .everything, purposes: [], summary: HeldDocument.summary(of: []), page: nil),
            .siteSync(
                request: 7, scope: .everything, purposes: [], summary: HeldDocument.summary(of: []),
                page: ReportPage(after: nil, documents: [], last: true)),
            .siteUpdate(request: 5, components: [[state], [state, state]], purge: [a1], more: true),
            .siteUpdate(request: 6, components: [], purge: [], more: false),
            .siteUpdate(request: 7, components: [], purge: [], more: true, reportWanted: true),
            // A quarantined site is told how far to drop; it says how far it cleared.
            .siteSync(request: 9, scope: .everything, purposes: [], summary: .zero, page: nil, cleared: 1_760_000_000_000),
            .siteSync(request: 10, scope: .everything, purposes: [], summary: .zero, page: nil, cleared: -5),
            .siteUpdate(request: 9, components: [], purge: [], more: false, dropThrough: 1_760_000_000_000),
        ]
        for message in syncs { #expect(try PeerMessage(tag: message.tag, payload: message.encodePayload()) == message) }
        // Every kind gets through a connection's frame decoder (which refuses unknown types).
        for message in messages + syncs { #expect(PeerMessage.knownTags.contains(message.tag), "tag \(message.tag) refused by frames") }
        #expect(throws: (any Error).self) { try PeerMessage(tag: 11, payload: syncs[0].encodePayload().dropLast(1).map { $0 }) }
        // A page's documents come in order, after where it starts.
        let backwards = PeerMessage.siteSync(
            request: 8, scope: .everything, purposes: [], summary: .zero,
            page: ReportPage(after: max(u1, a1), documents: [HeldDocument(identifier: min(u1, a1), digest: .zero)], last: true))
        #expect(throws: (any Error).self) { try PeerMessage(tag: 11, payload: backwards.encodePayload()) }
        // A resumed log moves a cursor forward, never back or nowhere.
        #expect(throws: (any Error).self) {
            try PeerMessage(tag: 10, payload: PeerMessage.logResumed(from: 9, through: 9, request: 1).encodePayload())
        }
        var truncated = messages[6].encodePayload()
        truncated.removeLast()
        #expect(throws: (any Error).self) { try PeerMessage(tag: 3, payload: truncated) }
        #expect(throws: (any Error).self) { try PeerMessage(tag: 2, payload: messages[5].encodePayload() + [0]) }
        // Only erasures and consent decisions may travel ahead of the log.
        let unlink = ChangeEntry(
            sequence: 6, origin: 9, originSequence: 5,
            change: .unlink(LinkEdge(delta.subject, Identifier(kind: .email, value: "x@y.z")!)!, LWWStamp(time: 1, tiebreak: "t")))
        let wrongAhead = PeerMessage.changes(from: 3, through: 5, entries: [], more: true, ahead: [unlink], request: 1)
        #expect(throws: (any Error).self) { try PeerMessage(tag: 3, payload: wrongAhead.encodePayload()) }
    }

    @Test func treeComparisonMessagesRoundTripAndAreDecodedStrictly() throws {
        let key = [UInt8](repeating: 0xAB, count: 32)
        let digest = Digest128(low: 1, high: 2)
        let identifier = Identifier(kind: .userId, value: "u-1")!
        let state = DocumentState(
            forgetKey: key, identifier: identifier, forgotten: ForgetRecord(time: -5, origin: 3, sequence: 8),
            rows: [DocumentState.Row(part: 2, suffix: [], value: [3, 0]), DocumentState.Row(part: 5, suffix: Array("m-1".utf8), value: [3, 1])])
        let messages: [PeerMessage] = [
            .digestRequest(request: 7, nodes: [DigestEntry(key: [], digest: digest), DigestEntry(key: [0x02, 0xAE], digest: .zero)]),
            .digestReply(
                request: 7,
                children: [
                    DigestChildren(node: [], children: [DigestEntry(key: [21], digest: digest)]),
                    DigestChildren(node: [21], children: [DigestEntry(key: [0x02, 0xAE], digest: digest)]),
                    DigestChildren(node: [0x02, 0xAE], children: [DigestEntry(key: key, digest: digest)]),
                ]),
            .documents(
                request: 7,
                states: [state, DocumentState(forgetKey: key, identifier: nil, forgotten: ForgetRecord(time: 9, origin: 0, sequence: 0), rows: [])],
                wanted: [key]),
        ]
        for message in messages {
            let payload = message.encodePayload()
            #expect(try PeerMessage(tag: message.tag, payload: payload) == message)
            for length in 0..<payload.count {
                #expect(throws: (any Error).self) { try PeerMessage(tag: message.tag, payload: Array(payload.prefix(length))) }
            }
            #expect(throws: (any Error).self) { try PeerMessage(tag: message.tag, payload: payload + [0]) }
        }
        func refused(_ message: PeerMessage) -> Bool { (try? PeerMessage(tag: message.tag, payload: message.encodePayload())) == nil }
        // Tree nodes are the root, 32 ranges and 1,024 buckets; a child lies under its node, one level down.
        #expect(refused(.digestRequest(request: 1, nodes: [DigestEntry(key: [1, 2, 3], digest: digest)])))
        #expect(refused(.digestRequest(request: 1, nodes: [DigestEntry(key: [64], digest: digest)])))
        #expect(refused(.digestRequest(request: 1, nodes: [DigestEntry(key: [0x04, 0x00], digest: digest)])))
        #expect(refused(.digestReply(request: 1, children: [DigestChildren(node: [1], children: [DigestEntry(key: [0, 0x10], digest: digest)])])))
        #expect(refused(.digestReply(request: 1, children: [DigestChildren(node: [0x02, 0xAF], children: [DigestEntry(key: key, digest: digest)])])))
        #expect(
            refused(
                .digestReply(request: 1, children: [DigestChildren(node: [0x02, 0xAE], children: [DigestEntry(key: [1, 2, 3], digest: digest)])])))
        #expect(refused(.digestRequest(request: 1, nodes: Array(repeating: DigestEntry(key: [], digest: digest), count: 257))))
        #expect(refused(.documents(request: 1, states: [], wanted: Array(repeating: key, count: 257))))
        // Rows need an identifier to belong to.
        #expect(
            refused(.documents(request: 1, states: [DocumentState(forgetKey: key, identifier: nil, forgotten: nil, rows: state.rows)], wanted: [])))
    }
}

/// A few members exchanging membership messages instantly, for scenario tests of SWIM alone.
struct MembershipCluster {
    var members: [Membership]
    var down: Set<Int> = []
    /// Directed links that drop everything: (from, to), by index.
    var blocked: Set<[Int]> = []
    var now: Int64 = 0

    init(count: Int, roles: [MemberRole]? = nil, settings: MembershipSettings = MembershipSettings()) {
        members = (0..<count).map { index in
            Membership(
                me: Member(id: UInt64(index + 1), name: "n\(index + 1)", address: "n\(index + 1)", role: roles?[index] ?? .core, incarnation: 1),
                seeds: index == 0 ? [] : ["n1"], settings: settings, seed: UInt64(index))
        }
    }

    mutating func run(milliseconds: Int64) {
        let end = now + milliseconds
        while now < end {
            now += 20
            for index in members.indices where !down.contains(index) { deliver(members[index].tick(now: now), from: index) }
        }
    }

    mutating func deliver(_ directives: [Membership.Directive], from sender: Int) {
        var queue = directives.map { (sender, $0) }
        while !queue.isEmpty {
            let (from, directive) = queue.removeFirst()
            guard case .send(let address, let message) = directive else { continue }
            let target = Int(address.dropFirst())! - 1
            guard !down.contains(target), !down.contains(from), !blocked.contains([from, target]) else { continue }
            queue += members[target].receive(message, from: members[from].me.address, now: now).map { (target, $0) }
        }
    }

    func status(of id: UInt64, seenBy index: Int) -> MemberStatus? { members[index].members[id]?.status }
}

@Suite("Membership (SWIM)")
struct MembershipTests {
    @Test func membersJoinThroughASeedAndLearnEachOther() {
        var cluster = MembershipCluster(count: 5)
        cluster.run(milliseconds: 5_000)
        for index in 0..<5 { #expect(cluster.members[index].reachable.count == 4, "n\(index + 1)") }
    }

    @Test func aSilentMemberIsSuspectedThenDeclaredDeadByAll() {
        var cluster = MembershipCluster(count: 5)
        cluster.run(milliseconds: 5_000)
        cluster.down = [4]
        cluster.run(milliseconds: 3_000)
        #expect(
            (0..<4).contains { cluster.status(of: 5, seenBy: $0) == .suspect } || (0..<4).allSatisfy { cluster.status(of: 5, seenBy: $0) == .dead })
        cluster.run(milliseconds: 60_000)
        for index in 0..<4 { #expect(cluster.status(of: 5, seenBy: index) == .dead) }
    }

    @Test func aSuspectedMemberRefutesWithAHigherIncarnation() {
        var cluster = MembershipCluster(count: 4)
        cluster.run(milliseconds: 5_000)
        // n4 is cut off just long enough to be suspected, then comes back: its direct answers
        // (or a refutation, if the suspicion still reaches it) make it alive everywhere.
        cluster.down = [3]
        cluster.run(milliseconds: 2_500)
        #expect((0..<3).contains { cluster.status(of: 4, seenBy: $0) == .suspect }, "suspected while cut off")
        cluster.down = []
        cluster.run(milliseconds: 15_000)
        for index in 0..<3 { #expect(cluster.status(of: 4, seenBy: index) == .alive) }
        // Told it is suspected, a member refutes with a higher incarnation, which overrides the suspicion.
        var suspected = cluster.members[3].me
        suspected.status = .suspect
        let incarnation = suspected.incarnation
        cluster.deliver([.send(to: "n4", MembershipMessage(sender: cluster.members[0].me, kind: .ping(99), updates: [suspected]))], from: 0)
        #expect(cluster.members[3].me.incarnation == incarnation + 1)
        for index in 0..<3 {
            #expect(cluster.members[index].members[4]?.incarnation == incarnation + 1 || cluster.status(of: 4, seenBy: index) == .alive)
        }
    }

    @Test func aMemberThatLeavesIsMarkedLeftAndCanRejoin() {
        var cluster = MembershipCluster(count: 3)
        cluster.run(milliseconds: 5_000)
        cluster.deliver(cluster.members[2].leave(), from: 2)
        for index in 0..<2 { #expect(cluster.status(of: 3, seenBy: index) == .left) }
        var again = cluster.members[2].me
        again.status = .alive
        again.incarnation += 1
        cluster.members[2] = Membership(me: again, seeds: ["n1"], seed: 99)
        cluster.run(milliseconds: 5_000)
        for index in 0..<2 { #expect(cluster.status(of: 3, seenBy: index) == .alive) }
    }

    /// Nodes that start while the cluster is partitioned learn only their own side. Once the
    /// partition heals, a side that knows nothing of the other still finds it through its seeds.
    @Test func halvesThatStartedApartFindEachOtherThroughTheirSeeds() {
        var cluster = MembershipCluster(count: 4)
        for a in 0..<2 { for b in 2..<4 { cluster.blocked.formUnion([[a, b], [b, a]]) } }
        cluster.run(milliseconds: 5_000)
        // n3 and n4 cannot reach their seed; an operator joins them to each other.
        cluster.deliver(cluster.members[3].join("n3"), from: 3)
        cluster.run(milliseconds: 3_000)
        #expect(cluster.members[2].reachable.map(\.name) == ["n4"] && cluster.members[0].reachable.map(\.name) == ["n2"])
        cluster.blocked = []
        cluster.run(milliseconds: 10_000)
        for index in 0..<4 {
            #expect(cluster.members[index].reachable.count == 3, "n\(index + 1) sees \(cluster.members[index].reachable.map(\.name))")
        }
    }

    @Test func aDeadCoreMemberIsReapedButAnEdgeAwayForLongIsKept() {
        var settings = MembershipSettings()
        settings.reapAfter = 60_000
        var cluster = MembershipCluster(count: 3, roles: [.core, .core, .edge], settings: settings)
        cluster.run(milliseconds: 5_000)
        cluster.down = [1, 2]
        cluster.run(milliseconds: 200_000)
        #expect(cluster.status(of: 2, seenBy: 0) == nil)
        #expect(cluster.status(of: 3, seenBy: 0) == .dead)
        cluster.down = []
        cluster.run(milliseconds: 30_000)
        #expect(cluster.status(of: 3, seenBy: 0) == .alive)
        #expect(cluster.status(of: 2, seenBy: 0) == .alive)
    }
}
