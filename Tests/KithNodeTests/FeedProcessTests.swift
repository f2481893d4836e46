import Foundation
import KithJSON
import KithTestSupport
import Testing

/// The change feed across real processes: a consumer follows node A while writes go on, A is
/// killed (kill -9) mid-stream, and the consumer goes on at node B with its last token.
@Suite("The change feed across kith processes", .serialized)
struct FeedProcessTests {
    /// One page of `GET /v1/changes` at `node`: the records, and the token to come back with.
    static func page(_ node: NodeProcess, since token: String, wait: Int = 0) throws -> (records: [JSONValue], next: String)? {
        guard
            let response = try node.request(
                "GET", "/v1/changes?purpose=support&limit=37&wait=\(wait)&since=\(token)", headers: ["Authorization: Bearer tk"],
                timeoutSeconds: wait + 5),
            response.status == 200, let json = try? JSONParser.parse(Array(response.body.utf8)),  // nil: not a page, the caller fails
            let records = json["changes"]?.arrayValue, let next = json["next"]?.stringValue
        else { return nil }
        return (records, next)
    }

    @Test func aConsumerMissesNothingWhenItsNodeIsKilledMidStream() throws {
        let cluster = try ClusterFixture()
        let nodes = try cluster.startAll(3)
        let (first, second, third) = (nodes[0], nodes[1], nodes[2])
        var acknowledged: Set<String> = []
        /// A batch written on `node`, answered once `concern` replicas hold it: every message
        /// acknowledged is then on the node the consumer moves to.
        func write(_ node: NodeProcess, _ prefix: String, _ round: Int, _ concern: String) throws {
            let body = trackBatch(prefix: prefix, first: round * 40, count: 40, customers: 7)
            guard try node.ingest("/v1/batch?w=\(concern)", body) == 200 else { return }
            for index in round * 40..<round * 40 + 40 { acknowledged.insert("\(prefix)-m\(index)") }
        }
        var given: [String] = []
        var changes: [String] = []
        var token = "0"
        func follow(_ node: NodeProcess) throws -> Bool {
            guard let page = try Self.page(node, since: token) else { return false }
            for record in page.records {
                if let id = record["messageId"]?.stringValue { given.append(id) }
                if let change = record["change"]?.stringValue { changes.append(change) }
            }
            token = page.next
            return true
        }
        for round in 0..<6 {
            try write(round % 2 == 0 ? first : second, "r", round, "all")
            #expect(try follow(first))
        }
        // Killed mid-stream: the consumer has read part of what was written.
        #expect(given.count < acknowledged.count, "the consumer is behind when its node dies (\(given.count) of \(acknowledged.count))")
        first.stop(kill: true)
        for round in 6..<10 { try write(second, "r", round, "quorum") }
        #expect(acknowledged.count >= 360)
        let caughtUp = try eventually(20) {
            _ = try follow(third)
            return acknowledged.isSubset(of: given)
        }
        #expect(caughtUp, "missed at the second node: \(acknowledged.subtracting(given).sorted().prefix(5))")
        #expect(given.count == Set(given).count, "no duplicates: the token says exactly what was given")
        // Each origin's changes came in that origin's order.
        var highest: [Substring: Int] = [:]
        for change in changes {
            let parts = change.split(separator: ".")
            guard parts.count == 2, let sequence = Int(parts[1]) else {
                Issue.record("a change id \(change)")
                continue
            }
            #expect(sequence > highest[parts[0], default: 0], "\(change) after \(highest[parts[0], default: 0])")
            highest[parts[0]] = sequence
        }
    }

    /// A long poll answers as soon as a write lands, not at its deadline.
    @Test func aLongPollAnswersWhenAWriteLands() throws {
        let cluster = try ClusterFixture()
        let node = try cluster.start("n1")
        let start = try #require(try Self.page(node, since: "now")).next
        // The poll is sent first and held by the node; the write goes on another connection.
        let poll = try TestClient(port: node.port, timeoutSeconds: 25)
        poll.send(
            "GET /v1/changes?purpose=support&wait=20&since=\(start) HTTP/1.1\r\nHost: kith\r\nAuthorization: Bearer tk\r\n\r\n")
        Thread.sleep(forTimeInterval: 0.5)
        let began = Date()
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-1","traits":{"plan":"plus"},"messageId":"lp-1"}"#) == 200)
        let answer = try #require(poll.readResponse())
        #expect(Date().timeIntervalSince(began) < 5, "answered when the write landed, not at the deadline")
        let record = try JSONParser.parse(Array(answer.body.utf8))["changes"]?.arrayValue?.first
        #expect(answer.status == 200 && record?["messageId"] == "lp-1" && record?["traits"]?["plan"] == "plus", "\(answer.body)")
    }

    /// The feed as Server-Sent Events from a real node: a write reaches the open stream.
    @Test func anEventStreamDeliversWritesAsTheyLand() throws {
        let cluster = try ClusterFixture()
        let node = try cluster.start("n1")
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-1","messageId":"sse-1"}"#) == 200)
        let client = try TestClient(port: node.port, timeoutSeconds: 10)
        client.send(
            "GET /v1/changes?purpose=support&since=0 HTTP/1.1\r\nHost: kith\r\nAuthorization: Bearer tk\r\nAccept: text/event-stream\r\n\r\n")
        let first = client.readUntil(#""messageId":"sse-1""#)
        #expect(first.contains("Content-Type: text/event-stream") && first.contains("data: {"), "\(first)")
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-2","messageId":"sse-2"}"#) == 200)
        let second = client.readUntil(#""messageId":"sse-2""#)
        #expect(second.contains("id: f1.") && second.contains(#""messageId":"sse-2""#), "\(second)")
    }

    /// `kith changes` prints the feed as NDJSON and says where to resume; `--follow` prints a
    /// change as it lands.
    @Test func theChangesCommandPrintsAndResumes() throws {
        let cluster = try ClusterFixture()
        let node = try cluster.start("n1")
        for id in ["cc-1", "cc-2"] { #expect(try node.ingest("/v1/identify", #"{"userId":"u-\#(id)","messageId":"\#(id)"}"#) == 200) }
        let common = ["--host", "127.0.0.1:\(node.port)", "--token", "tk", "--purpose", "support"]
        let first = try runKith(["changes", "--since", "0"] + common)
        let lines = first.output.split(separator: "\n")
        #expect(first.status == 0 && lines.count == 2 && lines[1].contains(#""messageId":"cc-2""#), "\(first)")
        let next = try #require(first.error.split(separator: "\n").last.flatMap { $0.hasPrefix("next: ") ? String($0.dropFirst(6)) : nil })
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-cc-3","messageId":"cc-3"}"#) == 200)
        let resumed = try runKith(["changes", "--since", next] + common)
        #expect(resumed.status == 0 && resumed.output.split(separator: "\n").count == 1 && resumed.output.contains("cc-3"), "\(resumed)")
        #expect(try runKith(["changes"] + common.dropLast(2)).status == 64, "a purpose is required")
        let expired = try runKith(["changes", "--since", "f1.zz"] + common)
        #expect(expired.status == 1 && expired.error.contains("not a token"), "\(expired)")

        // Following: a change written later is printed as it lands, and where to resume with it.
        let follower = Process()
        follower.executableURL = URL(fileURLWithPath: kithBinary)
        follower.arguments = ["changes", "--follow", "--since", next] + common
        let output = Pipe(), errors = Pipe()
        follower.standardOutput = output
        follower.standardError = errors
        try follower.run()
        defer {
            kill(follower.processIdentifier, SIGKILL)
            follower.waitUntilExit()
        }
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-cc-4","messageId":"cc-4"}"#) == 200)
        let printed = Collected()
        let reader = Thread {
            var text = Data()
            while !String(decoding: text, as: UTF8.self).contains("cc-4") {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                text += chunk
            }
            printed.set(text)
        }
        reader.start()
        #expect(eventually(10) { printed.isSet }, "the follower printed nothing")
        #expect(String(decoding: printed.data, as: UTF8.self).contains(#""messageId":"cc-4""#))
    }
}
