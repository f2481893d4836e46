import Foundation
import KithCRDT
import KithJSON
import KithProfile
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// The retention rules on their own: which rule keeps what, and when it expires.
@Suite("Retention rules")
struct RetentionRulesTests {
    static let day: Int64 = 86_400_000

    static let rules: RetentionRules = {
        var rules = RetentionRules()
        rules.eventsByName["Order Completed"] = .init(millis: 2_557 * day, purpose: "tax")
        rules.events = .init(millis: 396 * day, purpose: "analytics")
        rules.traitsByName["favouriteColour"] = .init(millis: 30 * day, purpose: "personalization")
        rules.traitsByCategory["contact"] = .init(millis: 730 * day, purpose: "support")
        rules.traitCategories = ["email": "contact", "plan": "account"]
        rules.unnamedTraitCategory = "sensitive"
        return rules
    }()

    @Test func aRuleByNameWinsOverTheCategoryAndUnnamedDataIsKept() {
        let rules = Self.rules
        #expect(rules.keep(forEvent: "Order Completed")?.purpose == "tax" && rules.keep(forEvent: "Page Viewed")?.purpose == "analytics")
        #expect(rules.keep(forTrait: "favouriteColour")?.purpose == "personalization" && rules.keep(forTrait: "email")?.purpose == "support")
        #expect(rules.keep(forTrait: "plan") == nil && rules.keep(forTrait: "nickname") == nil, "no rule for account or sensitive")
        #expect(RetentionRules.none.isEmpty && RetentionRules.none.expiry(ofEvent: "Order Completed", at: 0) == nil)
    }

    /// Expiry is the data's own time plus the rule: gone at and after it, whoever asks.
    @Test func expiryIsTheTimeOfTheDataPlusTheRule() {
        let rules = Self.rules
        let time: Int64 = 1_700_000_000_000
        #expect(rules.expiry(ofEvent: "Page Viewed", at: time) == time + 396 * Self.day)
        #expect(!rules.isExpired(event: "Page Viewed", at: time, now: time + 396 * Self.day - 1))
        #expect(rules.isExpired(event: "Page Viewed", at: time, now: time + 396 * Self.day))
        #expect(rules.isExpired(trait: "email", updatedAt: time, now: time + 731 * Self.day))
        #expect(!rules.isExpired(trait: "plan", updatedAt: .min, now: .max))
        // A time at the far end of the range expires never rather than wrapping around.
        #expect(rules.expiry(ofEvent: "Page Viewed", at: .max - 1) == .max)
        // Of two rules naming the same data, the longer keeps it.
        let short = RetentionRules.Keep(millis: Self.day, purpose: "b")
        #expect(short.longer(.init(millis: 2 * Self.day, purpose: "a")).purpose == "a" && short.longer(nil) == short)
    }
}

/// The sweep in both stores: what it drops, what it rebuilds, and that two replicas given the
/// same data and the same time end the same.
@Suite("Retention sweep (LMDB and memory)")
struct RetentionSweepTests {
    static let day: Int64 = 86_400_000
    static let now: Int64 = 1_780_000_000_000

    /// The rules above: no rule for `plan` (account) or `city` (unnamed, sensitive).
    static let rules = RetentionRulesTests.rules

    func delta(_ text: String, daysAgo: Int64) throws -> ProfileDelta {
        try SegmentMessageParser().parse(try JSONParser.parse(Array(text.utf8)), receivedAt: Self.now - daysAgo * Self.day)
    }

    /// A page view by each of `count` customers (`userPrefix` and a number), all of one age.
    func pageViews(of count: Int, userPrefix: String, daysAgo: Int64) throws -> [ProfileDelta] {
        try (0..<count).map { index in
            try delta(
                #"{"type":"track","userId":"\#(userPrefix)\#(index)","event":"Page Viewed","messageId":"p-\#(index)"}"#, daysAgo: daysAgo)
        }
    }

    /// A customer with events and traits of every age, and one known only by an old event.
    func messages() throws -> [ProfileDelta] {
        [
            try delta(#"{"type":"track","userId":"u-1","event":"Page Viewed","messageId":"old-page"}"#, daysAgo: 400),
            try delta(#"{"type":"track","userId":"u-1","event":"Page Viewed","messageId":"new-page"}"#, daysAgo: 10),
            try delta(#"{"type":"track","userId":"u-1","event":"Order Completed","messageId":"old-order","properties":{"revenue":5}}"#, daysAgo: 400),
            try delta(#"{"type":"identify","userId":"u-1","traits":{"favouriteColour":"teal","plan":"plus"},"messageId":"id-1"}"#, daysAgo: 40),
            try delta(#"{"type":"identify","userId":"u-1","anonymousId":"a-1","traits":{"city":"Leeds"},"messageId":"id-2"}"#, daysAgo: 20),
            try delta(#"{"type":"track","userId":"u-gone","event":"Page Viewed","messageId":"gone-page"}"#, daysAgo: 500),
        ]
    }

    func sweep(_ store: any ProfileStore, under rules: RetentionRules = Self.rules, now: Int64 = Self.now) throws -> RetentionStep {
        var total = RetentionStep()
        repeat {
            let step = try store.expire(under: rules, now: now, buckets: 100)
            total.add(step)
            total.passEnded = step.passEnded
        } while !total.passEnded
        return total
    }

    @Test(arguments: StoreKind.allCases)
    func expiredEventsAndTraitsGoAndTheProfileIsRebuilt(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        let store = fixture.store
        _ = try store.apply(try messages())
        let step = try sweep(store)
        #expect(step.eventsDropped == 2 && step.traitsDropped == 1, "\(step)")
        let view = try #require(try store.view(of: Identifier(kind: .anonymousId, value: "a-1")!))
        #expect(view.head.messageCount == 4 && view.head.aggregates.keys == ["Order Completed", "Page Viewed"])
        #expect(view.head.aggregates["Page Viewed"]?.count == 1 && view.head.recent.map(\.messageId).contains("old-page") == false)
        #expect(view.head.traits["favouriteColour"] == nil && view.head.traits["plan"] != nil && view.head.traits["city"] != nil)
        #expect(try store.hasMessage("old-order", subject: Identifier(kind: .userId, value: "u-1")!), "kept 7 years for tax")
        #expect(try !store.hasMessage("old-page", subject: Identifier(kind: .userId, value: "u-1")!))
        // Known only by an expired event: nothing left, no profile.
        #expect(try store.view(of: Identifier(kind: .userId, value: "u-gone")!) == nil)
        // A second pass at the same time drops nothing more.
        let again = try sweep(store)
        #expect(again.eventsDropped == 0 && again.traitsDropped == 0)
    }

    /// A step takes at most its identifiers, however many a bucket holds, and goes on inside
    /// a bucket where the last one stopped: every identifier once a pass, nothing left behind.
    @Test(arguments: StoreKind.allCases)
    func stepsAreBoundedByIdentifiers(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        _ = try fixture.store.apply(try pageViews(of: 60, userPrefix: "b-", daysAgo: 400))
        var steps: [RetentionStep] = []
        repeat {
            steps.append(try fixture.store.expire(under: Self.rules, now: Self.now, buckets: 1_024, identifiers: 7))
        } while !steps.last!.passEnded
        #expect(steps.allSatisfy { $0.identifiers <= 7 } && steps.map(\.identifiers).reduce(0, +) == 60, "\(steps.map(\.identifiers))")
        #expect(steps.count == 9 && steps.map(\.eventsDropped).reduce(0, +) == 60)
        #expect(try (0..<60).allSatisfy { try fixture.store.view(of: Identifier(kind: .userId, value: "b-\($0)")!) == nil })
    }

    /// Steps go in forget-key order, each asking for one more identifier than it takes from
    /// where the last one stopped: every identifier once over the walk, in either store.
    @Test(arguments: StoreKind.allCases)
    func stepsGoOnFromWhereTheLastStopped(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        _ = try fixture.store.apply(try pageViews(of: 60, userPrefix: "r-", daysAgo: 1))
        let store = try #require(fixture.store as? any EngineBackedStore)
        try store.read { reader in
            let asking = WalkRecordingReader(readThrough: reader)
            var position = BucketWalkPosition.start
            var seen: [Identifier] = []
            repeat {
                let (taken, next) = try store.engine.walkStep(from: position, buckets: 1_024, limit: 7, in: asking)
                #expect(asking.asked.last?.position == position && asking.asked.last?.limit == 8)
                seen += taken
                position = next
            } while !position.isAtEnd
            #expect(asking.asked.count == 9 && seen.count == 60 && Set(seen).count == 60)
            let keys = seen.map { store.engine.hasher.forgetKeyBytes(for: $0) }
            #expect(zip(keys, keys.dropFirst()).allSatisfy { $0.lexicographicallyPrecedes($1) }, "in forget-key order")
        }
    }

    /// A sealed store's step reads the table from where the last one stopped, not from its
    /// bucket's start: a pass over a bucket of 120 identifiers in steps of 7 reads each row about
    /// once (from the bucket's start each time, it read them nine times over).
    @Test func aSealedStepReadsFromWhereTheLastStopped() throws {
        let fixture = try StoreFixture(.lmdb)
        let store = try #require(fixture.store as? LMDBProfileStore)
        let hasher = store.engine.hasher
        let bucket = 700
        var users: [String] = []
        var candidate = 0
        while users.count < 120 {
            let user = "s-\(candidate)"
            if DigestTreeShape.bucket(of: hasher.forgetKeyBytes(for: Identifier(kind: .userId, value: user)!)) == bucket { users.append(user) }
            candidate += 1
        }
        _ = try store.apply(
            try users.map { try delta(#"{"type":"track","userId":"\#($0)","event":"Page Viewed","messageId":"p-\#($0)"}"#, daysAgo: 1) })
        try store.environment.read { txn in
            let counting = RowCountingReader(readThrough: LMDBReading(reader: txn, tables: store.tables))
            let sealed = SealedReading(base: counting, session: SealingSession(store.sealing, writing: false))
            var rows = 0
            try counting.readThrough.scan(.documents, from: DigestTreeShape.firstBytes(ofBucket: bucket)) { key, _ in
                guard DigestTreeShape.bucket(of: key) == bucket else { return .stop }
                rows += 1
                return .next
            }
            var position = BucketWalkPosition(bucket: bucket, after: nil)
            var seen = 0
            repeat {
                let (taken, next) = try store.engine.walkStep(from: position, buckets: 1, limit: 7, in: sealed)
                seen += taken.count
                position = next
            } while position.bucket == bucket
            #expect(seen == 120)
            #expect(counting.rowsScanned <= 2 * rows, "\(counting.rowsScanned) rows read for a bucket of \(rows)")
        }
    }

    /// Positions as stored: a sweep's and a clearing's round-trip; those written before walks
    /// went in forget-key order (an identifier key after the bucket) are read for their bucket,
    /// walked again from its start, and a sweep's old row goes once it has been read.
    @Test func storedWalkPositionsAndTheirFormerForms() throws {
        let forgetKey = HMACForgetKeyHasher(secret: secret).forgetKeyBytes(for: Identifier(kind: .userId, value: "w-1")!)
        let position = BucketWalkPosition(bucket: DigestTreeShape.bucket(of: forgetKey), after: forgetKey)
        #expect(try BucketWalkPosition(stored: position.stored) == position)
        #expect(throws: BinaryDecodingError.self) { try BucketWalkPosition(stored: sequenceKey(3) + [1, 2, 3]) }
        #expect(throws: BinaryDecodingError.self) { try BucketWalkPosition(stored: sequenceKey(UInt64(position.bucket + 1) % 1_024) + forgetKey) }
        let clearing = ClearingProgress(floor: 7, position: position)
        #expect(try ProfileFormat.decode(ClearingProgress.self, from: ProfileFormat.encode(clearing)) == clearing)
        var former = BinaryWriter()
        former.write(signed: 7)
        former.write(varint: 12)
        former.write(bool: true)
        former.write(bytes: Identifier(kind: .userId, value: "w-1")!.key)
        let read = try ProfileFormat.decode(ClearingProgress.self, from: [ProfileFormat.version] + former.bytes)
        #expect(read == ClearingProgress(floor: 7, position: BucketWalkPosition(bucket: 12, after: nil)))

        let fixture = try StoreFixture(.lmdb)
        let store = try #require(fixture.store as? LMDBProfileStore)
        try store.environment.write { txn in
            _ = try LMDBWriting(transaction: txn, tables: store.tables).put(
                .meta, StoreEngine.legacyRetentionProgressMetaKey, sequenceKey(1_023) + Identifier(kind: .userId, value: "w-1")!.key, mode: .upsert)
        }
        #expect(try store.expire(under: Self.rules, now: Self.now, buckets: 1).passEnded, "the last bucket, from its start")
        let left = try store.environment.read { txn in
            try LMDBReading(reader: txn, tables: store.tables).get(.meta, StoreEngine.legacyRetentionProgressMetaKey)
        }
        #expect(left == nil)
    }

    /// A consent grant kept past its rule lapses (reads as never given) in the sweep; a denial
    /// of the same age stays, and a fresh grant stays.
    @Test(arguments: StoreKind.allCases)
    func lapsedGrantsGoAndDenialsStay(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        var rules = Self.rules
        for name in ["advertising", "c0004"] { rules.grantsByName[name] = .init(millis: 365 * Self.day, purpose: "advertising") }
        rules.grantsByName["analytics"] = .init(millis: 365 * Self.day, purpose: "analytics")
        _ = try fixture.store.apply([
            try delta(
                #"{"type":"identify","userId":"u-c","messageId":"c-1","context":{"consent":{"categoryPreferences":{"C0004":true,"analytics":false}}}}"#,
                daysAgo: 400),
            try delta(
                #"{"type":"identify","userId":"u-d","messageId":"c-2","context":{"consent":{"categoryPreferences":{"Advertising":true}}}}"#,
                daysAgo: 30),
        ])
        var dropped = 0
        repeat {
            let step = try fixture.store.expire(under: rules, now: Self.now, buckets: 100)
            dropped += step.grantsDropped
            if step.passEnded { break }
        } while true
        let old = try #require(try fixture.store.view(of: Identifier(kind: .userId, value: "u-c")!))
        #expect(old.head.consent["C0004"] == nil && old.head.consent["analytics"]?.granted == false && dropped == 1, "\(old.head.consent)")
        #expect(try fixture.store.view(of: Identifier(kind: .userId, value: "u-d")!)?.head.consent["Advertising"]?.granted == true)
    }

    /// Without rules the sweep still walks every identifier, and stores the ledger blocks
    /// ingest left plain deflated: the same rows, the same content digest, the same events.
    @Test(arguments: StoreKind.allCases)
    func aSweepWithoutRulesDeflatesWhatIngestLeftPlain(_ kind: StoreKind) throws {
        let fixture = try StoreFixture(kind)
        var random = SplitMix64(seed: 5)
        let order = Array(0..<150).shuffled(using: &random)
        _ = try fixture.store.apply(
            try order.map { index in
                try delta(
                    #"{"type":"track","userId":"u-1","event":"Product Viewed","messageId":"v-\#(index)","properties":{"sku":"sku-\#(index)"}}"#,
                    daysAgo: 2)
            })
        let customer = Identifier(kind: .userId, value: "u-1")!
        let digest = try fixture.store.contentDigest()
        let events = try fixture.store.events(of: customer, before: nil, limit: 500).events
        let sweep = { (blocks: Int) in
            var deflated = 0
            var step: RetentionStep
            repeat {
                step = try fixture.store.expire(under: .none, now: Self.now, buckets: 64, identifiers: 2_000, blocks: blocks)
                #expect(step.blocksDeflated <= blocks)
                deflated += step.blocksDeflated
            } while !step.passEnded
            return deflated
        }
        // A step deflates at most its blocks; the rest wait for the next pass.
        #expect(try sweep(2) == 2)
        #expect(try sweep(.max) > 2)
        #expect(try fixture.store.contentDigest() == digest)
        #expect(try fixture.store.events(of: customer, before: nil, limit: 500).events == events && events.count == 150)
        #expect(try sweep(.max) == 0, "nothing left plain")
        // A row landing in a deflated block leaves it plain again, for the next sweep.
        _ = try fixture.store.apply([
            try delta(#"{"type":"track","userId":"u-1","event":"Product Viewed","messageId":"v-5x"}"#, daysAgo: 1)
        ])
        #expect(try sweep(.max) == 1)
        #expect(try fixture.store.hasMessage("v-5x", subject: customer) && fixture.store.hasMessage("v-77", subject: customer))
    }

    /// Same data, same rules, same time: the same rows dropped, byte for byte, wherever the
    /// sweep stopped between steps and in whatever order the messages came.
    @Test(arguments: StoreKind.allCases)
    func replicasSweptAtTheSameTimeHoldTheSameRows(_ kind: StoreKind) throws {
        let one = try StoreFixture(kind)
        let other = try StoreFixture(kind)
        _ = try one.store.apply(try messages())
        _ = try other.store.apply(try messages().reversed())
        _ = try sweep(one.store)
        var steps = 0
        repeat { steps += 1 } while try !other.store.expire(under: Self.rules, now: Self.now, buckets: 7).passEnded
        #expect(steps > 1)
        #expect(try one.store.contentDigest() == other.store.contentDigest())
        // A message redelivered later, with a later event time: a replica that swept the first
        // copy before the second came ends as one that saw both copies, once both have swept.
        let first = try delta(#"{"type":"track","userId":"u-2","event":"Page Viewed","messageId":"twice"}"#, daysAgo: 500)
        let second = try delta(#"{"type":"track","userId":"u-2","event":"Page Viewed","messageId":"twice"}"#, daysAgo: 3)
        _ = try one.store.apply([first])
        _ = try sweep(one.store)
        _ = try one.store.apply([second])
        _ = try other.store.apply([first, second])
        _ = try sweep(one.store)
        _ = try sweep(other.store)
        #expect(try one.store.contentDigest() == other.store.contentDigest())
        #expect(try one.store.hasMessage("twice", subject: Identifier(kind: .userId, value: "u-2")!))
        // A sweep earlier in time drops less: expiry grows with time only.
        let early = try StoreFixture(kind)
        _ = try early.store.apply(try messages())
        let step = try sweep(early.store, now: Self.now - 100 * Self.day)
        #expect(step.eventsDropped == 1 && step.traitsDropped == 0, "\(step)")
    }

    /// Identify records kept 30 days: older ones go with the consent history and acceptances
    /// they held, while what they set (traits, consent) stays under its own rules and a link
    /// one made stays as its link record. Group records, no rule, stay.
    @Test(arguments: StoreKind.allCases)
    func expiredIdentifyRecordsGoAndTheirLinksStay(_ kind: StoreKind) throws {
        var rules = RetentionRules()
        rules.messagesByType[.identify] = .init(millis: 30 * Self.day, purpose: "support")
        let user = Identifier(kind: .userId, value: "u-5")!, anonymous = Identifier(kind: .anonymousId, value: "a-5")!
        let fixture = try StoreFixture(kind)
        _ = try fixture.store.apply([
            try delta(
                #"{"type":"identify","userId":"u-5","traits":{"plan":"plus"},"messageId":"id-a","context":{"consent":{"categoryPreferences":{"Analytics":true}}}}"#,
                daysAgo: 60),
            try delta(#"{"type":"identify","userId":"u-5","anonymousId":"a-5","messageId":"id-b"}"#, daysAgo: 60),
            try delta(#"{"type":"identify","userId":"u-5","traits":{"city":"Oslo"},"messageId":"id-c"}"#, daysAgo: 10),
            try delta(#"{"type":"group","userId":"u-5","groupId":"g-1","messageId":"group-1"}"#, daysAgo: 60),
        ])
        #expect(try fixture.store.consentHistory(of: user).count == 1)
        let step = try sweep(fixture.store, under: rules)
        #expect(step.messagesDropped == 2 && step.eventsDropped == 0 && step.traitsDropped == 0, "\(step)")
        let view = try #require(try fixture.store.view(of: anonymous))
        #expect(view.members.contains(user), "the link id-b made stays")
        #expect(view.head.messageCount == 2 && view.head.firstSeen == Self.now - 60 * Self.day, "group-1 and id-c: \(view.head)")
        #expect(view.head.traits["plan"] != nil && view.head.consent["Analytics"]?.granted == true, "what the records set stays")
        #expect(try fixture.store.consentHistory(of: user).isEmpty, "the history went with its record")
        #expect(try ["id-a", "id-b"].allSatisfy { try !fixture.store.hasMessage($0, subject: user) })
        #expect(try ["id-c", "group-1"].allSatisfy { try fixture.store.hasMessage($0, subject: user) })
        let again = try sweep(fixture.store, under: rules)
        #expect(again.messagesDropped == 0, "a link record is not dropped again: \(again)")
    }

    /// An expired event that linked two identifiers leaves the link: its row becomes a link
    /// record (when, and to whom), which is what an erasure rebuilds links from. A replica
    /// that took the erasure of one end before its sweep and one that took it after end alike.
    @Test(arguments: StoreKind.allCases)
    func anExpiredEventLeavesTheLinkItAsserted(_ kind: StoreKind) throws {
        let anonymous = Identifier(kind: .anonymousId, value: "a-9")!, user = Identifier(kind: .userId, value: "u-9")!
        let early = try delta(#"{"type":"track","anonymousId":"a-9","event":"Page Viewed","messageId":"early"}"#, daysAgo: 500)
        // Dated after the erasure below, so it survives it: the cookie came back and was linked.
        let linking = try delta(
            #"{"type":"track","userId":"u-9","anonymousId":"a-9","event":"Page Viewed","messageId":"linking","context":{"consent":{"categoryPreferences":{"Analytics":true}}}}"#,
            daysAgo: 400)
        let eraser = try StoreFixture(kind), before = try StoreFixture(kind), after = try StoreFixture(kind)
        _ = try eraser.store.apply([early])
        try eraser.store.erase(anonymous, requestedAt: Self.now - 450 * Self.day)
        // The erasure as another node (99) sends it.
        let erasure = try eraser.store.changes(after: 0, limit: .max).compactMap { entry -> ChangeEntry? in
            guard case .erasure = entry.change else { return nil }
            return ChangeEntry(sequence: 0, origin: 99, originSequence: 1, change: entry.change)
        }
        #expect(erasure.count == 1)
        _ = try before.store.apply([early])
        try before.store.applyReplicated(erasure, from: 99, through: nil)
        _ = try before.store.apply([linking])
        _ = try sweep(before.store)
        _ = try after.store.apply([early, linking])
        _ = try sweep(after.store)
        try after.store.applyReplicated(erasure, from: 99, through: nil)
        for store in [before.store, after.store] {
            let view = try #require(try store.view(of: user))
            #expect(view.members.contains(anonymous), "the link outlives the event that asserted it")
            #expect(view.head.messageCount == 0 && view.head.recent.isEmpty, "\(view.head)")
            #expect(try !store.hasMessage("linking", subject: user) && store.consentHistory(of: user).isEmpty)
            #expect(try store.seenBy(user) == SeenBy([:]), "the acceptances went with the event")
        }
        #expect(try before.store.contentDigest() == after.store.contentDigest())
        // Once an end is erased after the link, the link record goes with the rest.
        try after.store.erase(user, requestedAt: Self.now)
        #expect(try after.store.view(of: anonymous) == nil && after.store.view(of: user) == nil)
        let left = try after.store.statistics()
        #expect(left.sources == 0 && left.ledgerEntries == 0 && left.links == 0 && left.profiles == 0, "\(left)")
    }
}

/// Reads through a store's tables, noting where each walk listing started and how many it asked for.
final class WalkRecordingReader: ReadingThrough {
    let readThrough: any StoreReading
    var asked: [(position: BucketWalkPosition, limit: Int)] = []

    init(readThrough: any StoreReading) { self.readThrough = readThrough }

    func identifiers(after position: BucketWalkPosition, before endBucket: Int, atMost limit: Int, hasher: HMACForgetKeyHasher) throws
        -> [(forgetKey: [UInt8], identifier: Identifier)]
    {
        asked.append((position, limit))
        return try readThrough.identifiers(after: position, before: endBucket, atMost: limit, hasher: hasher)
    }
}

/// Reads through a store's tables, counting the rows scans go over.
final class RowCountingReader: ReadingThrough {
    let readThrough: any StoreReading
    var rowsScanned = 0

    init(readThrough: any StoreReading) { self.readThrough = readThrough }

    func scan(_ table: Table, from start: [UInt8], _ body: ([UInt8], [UInt8]) throws -> ScanStep) throws {
        try readThrough.scan(table, from: start) { key, value in
            rowsScanned += 1
            return try body(key, value)
        }
    }
}
