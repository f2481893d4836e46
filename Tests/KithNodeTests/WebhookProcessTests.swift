import Foundation
import KithJSON
import Testing

/// A webhook receiver on loopback, in Python (its own HTTP server and its own HMAC, so the
/// signature is checked by code that is not Kith's): it answers the first `failures` deliveries
/// 500, holds the next one past the node's 5 s timeout (when it `hangs`), then accepts; it writes each accepted
/// delivery's messageIds, one line a delivery, and `bad-signature` for any signature that does
/// not verify.
final class WebhookReceiver {
    static let script = #"""
        import hashlib, hmac, http.server, json, sys, time
        secret, failures, out, hang = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "hang"
        seen = {"n": 0}
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args): pass
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                seen["n"] += 1
                n = seen["n"]
                if n <= failures:
                    self.send_response(500); self.send_header("Content-Length", "0"); self.end_headers(); return
                if n == failures + 1 and hang:
                    time.sleep(7)
                    return
                fields = dict(part.split("=", 1) for part in self.headers["Kith-Signature"].split(","))
                expected = hmac.new(secret, (fields["t"] + ".").encode() + body, hashlib.sha256).hexdigest()
                with open(out, "a") as f:
                    if not hmac.compare_digest(expected, fields["v1"]):
                        f.write("bad-signature\n")
                    ids = [c.get("messageId", c["kind"]) for c in json.loads(body)["changes"]]
                    f.write(" ".join(ids) + "\n")
                self.send_response(204); self.send_header("Content-Length", "0"); self.end_headers()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """#

    let process = Process()
    let output: String
    let port: UInt16

    init(secret: String, failures: Int, hangs: Bool = true, directory: String) throws {
        let scriptPath = directory + "/receiver.py"
        output = directory + "/received.txt"
        try Self.script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", scriptPath, secret, String(failures), output, hangs ? "hang" : "no-hang"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        var line = ""
        while !line.hasSuffix("\n") {
            let byte = pipe.fileHandleForReading.readData(ofLength: 1)
            guard !byte.isEmpty else { throw NodeStartFailed() }
            line += String(decoding: byte, as: UTF8.self)
        }
        guard let port = UInt16(line.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw NodeStartFailed() }
        self.port = port
    }

    /// Each accepted delivery's messageIds.
    var deliveries: [[String]] {
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""  // none yet
        return text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
    }

    deinit {
        // SIGKILL: a child started from a Dispatch thread inherits its blocked SIGTERM.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

@Suite("Webhooks from kith processes", .serialized)
struct WebhookProcessTests {
    static func subscribe(_ node: NodeProcess, _ name: String, port: UInt16) throws -> String {
        let body = #"{"url":"http://127.0.0.1:\#(port)/hooks/kith","purpose":"support","since":"now"}"#
        let response = try #require(
            try node.request("PUT", "/v1/subscriptions/\(name)", body: Array(body.utf8), headers: ["Authorization: Bearer tk"]))
        #expect(response.status == 201, "\(response.body)")
        return try #require(try JSONParser.parse(Array(response.body.utf8))["secret"]?.stringValue)
    }

    /// A receiver that fails, times out and recovers: every change arrives, signed, each
    /// customer's changes in the order they were made.
    @Test func deliveriesSurviveAFailingReceiverInOrder() throws {
        let cluster = try ClusterFixture()
        let node = try cluster.start("n1")
        // The secret is needed before the receiver starts: ask for it with a placeholder url.
        let secret = try Self.subscribe(node, "crm", port: 9)
        let receiver = try WebhookReceiver(secret: secret, failures: 2, directory: cluster.directory)
        _ = try node.request(
            "PUT", "/v1/subscriptions/crm",
            body: Array(#"{"url":"http://127.0.0.1:\#(receiver.port)/hooks/kith","purpose":"support","since":"now"}"#.utf8),
            headers: ["Authorization: Bearer tk"])
        // More than two batches (100 records each), written while the receiver fails.
        var sent: [String] = []
        for round in 0..<5 {
            let batch = (round * 50..<round * 50 + 50).map { index in
                #"{"type":"identify","userId":"c-\#(index % 3)","traits":{"n":\#(index)},"messageId":"w-\#(index)"}"#
            }
            #expect(try node.ingest("/v1/batch", #"{"batch":["# + batch.joined(separator: ",") + "]}") == 200)
            sent += (round * 50..<round * 50 + 50).map { "w-\($0)" }
        }
        // Two refusals (1 s, 2 s of backoff), a timeout (5 s, then 4 s), then the rest.
        let arrived = eventually(40) { Set(receiver.deliveries.flatMap { $0 }).isSuperset(of: sent) }
        #expect(arrived, "delivered: \(receiver.deliveries)")
        let received = receiver.deliveries.flatMap { $0 }
        #expect(!received.contains("bad-signature"), "every signature verifies")
        for customer in 0..<3 {
            let mine = received.filter { id in sent.firstIndex(of: id).map { $0 % 3 == customer } ?? false }
            let firsts = mine.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
            #expect(firsts == sent.enumerated().filter { $0.offset % 3 == customer }.map(\.element), "customer \(customer): \(mine)")
        }
        #expect(receiver.deliveries.count >= 3, "several batches: \(receiver.deliveries.map(\.count))")
        let status = try #require(try node.request("GET", "/v1/subscriptions/crm", headers: ["Authorization: Bearer tk"]))
        #expect(status.body.contains(#""delivered":250"#) && status.body.contains(#""failures":0"#), "\(status.body)")
        // A restart: the subscription and its place survive; what comes next is delivered.
        Thread.sleep(forTimeInterval: 1.2)  // the progress is written at most once a second
        node.stop()
        try node.start()
        #expect(try node.ingest("/v1/identify", #"{"userId":"c-0","messageId":"after-restart"}"#) == 200)
        #expect(try eventually(10) { receiver.deliveries.flatMap { $0 }.contains("after-restart") })
        let again = receiver.deliveries.flatMap { $0 }.filter { $0.hasPrefix("w-") }
        #expect(again.count < 2 * sent.count, "at most a batch again after the restart, not the whole feed: \(again.count)")
    }

    /// The node that delivers a subscription is killed: another takes over from the progress it
    /// left, and every change still arrives.
    @Test func anotherNodeDeliversWhenTheOwnerIsKilled() throws {
        let cluster = try ClusterFixture()
        let nodes = try cluster.startAll(3)
        let secret = try Self.subscribe(nodes[0], "crm", port: 9)
        let receiver = try WebhookReceiver(secret: secret, failures: 0, directory: cluster.directory)
        _ = try nodes[0].request(
            "PUT", "/v1/subscriptions/crm",
            body: Array(#"{"url":"http://127.0.0.1:\#(receiver.port)/hooks/kith","purpose":"support","since":"now"}"#.utf8),
            headers: ["Authorization: Bearer tk"])
        // The definition reaches every node; the owner is the one they name.
        var ownerName: String?
        #expect(
            try eventually(10) {
                let names = try nodes.map { node -> String? in
                    let body = try node.request("GET", "/v1/subscriptions/crm", headers: ["Authorization: Bearer tk"])?.body ?? ""
                    return (try? JSONParser.parse(Array(body.utf8)))?["deliveredBy"]?.stringValue  // not yet there: nil
                }
                ownerName = names[0]
                return names.allSatisfy { $0 != nil && $0 == names[0] }
            })
        let owner = try #require(nodes.first { $0.dataDirectory.hasSuffix("/" + (ownerName ?? "?")) })
        let others = nodes.filter { $0 !== owner }
        var sent: [String] = []
        for index in 0..<20 {
            #expect(try others[0].ingest("/v1/identify", #"{"userId":"k-\#(index % 4)","messageId":"k-\#(index)"}"#) == 200)
            sent.append("k-\(index)")
        }
        #expect(try eventually(10) { Set(receiver.deliveries.flatMap { $0 }).isSuperset(of: sent) })
        owner.stop(kill: true)
        for index in 20..<40 {
            #expect(try others[0].ingest("/v1/identify?w=quorum", #"{"userId":"k-\#(index % 4)","messageId":"k-\#(index)"}"#) == 200)
            sent.append("k-\(index)")
        }
        let arrived = eventually(30) { Set(receiver.deliveries.flatMap { $0 }).isSuperset(of: sent) }
        #expect(arrived, "missing after the owner died: \(Set(sent).subtracting(receiver.deliveries.flatMap { $0 }).sorted())")
    }

    /// A receiver down for every attempt: the batch is parked, later changes go on, and a replay
    /// delivers the parked batch once the receiver is back (retries sped up by configuration).
    @Test func deadLettersAreReplayedOnceTheReceiverRecovers() throws {
        let cluster = try ClusterFixture()
        let node = try cluster.start(
            "n1", extraEnvironment: ["KITH_WEBHOOK_FIRST_RETRY_MS": "20", "KITH_WEBHOOK_MAX_RETRY_MS": "50", "KITH_WEBHOOK_ATTEMPTS": "3"])
        let secret = try Self.subscribe(node, "crm", port: 9)
        let receiver = try WebhookReceiver(secret: secret, failures: 3, hangs: false, directory: cluster.directory)
        _ = try node.request(
            "PUT", "/v1/subscriptions/crm",
            body: Array(#"{"url":"http://127.0.0.1:\#(receiver.port)/hooks/kith","purpose":"support","since":"now"}"#.utf8),
            headers: ["Authorization: Bearer tk"])
        #expect(try node.ingest("/v1/identify", #"{"userId":"d-1","messageId":"dead-1"}"#) == 200)
        let common = ["--host", "127.0.0.1:\(node.port)", "--token", "tk", "--format", "json"]
        #expect(
            try eventually(10) { try runKith(["subscriptions", "status", "crm"] + common).output.contains(#""deadLetters":1"#) },
            "parked after three failed attempts")
        #expect(try node.ingest("/v1/identify", #"{"userId":"d-2","messageId":"dead-2"}"#) == 200)
        #expect(try eventually(10) { receiver.deliveries.flatMap { $0 }.contains("dead-2") }, "delivery goes on after the parked batch")
        #expect(!receiver.deliveries.flatMap { $0 }.contains("dead-1"))
        #expect(try runKith(["subscriptions", "replay", "crm"] + common).status == 0)
        #expect(try eventually(10) { receiver.deliveries.flatMap { $0 }.contains("dead-1") }, "replayed: \(receiver.deliveries)")
        #expect(!receiver.deliveries.flatMap { $0 }.contains("bad-signature"))
        #expect(try eventually(5) { try runKith(["subscriptions", "status", "crm"] + common).output.contains(#""deadLetters":0"#) })
    }

    /// `kith subscriptions` sets, lists, shows, replays and deletes, and refuses what is wrong.
    @Test func theSubscriptionsCommandManagesThem() throws {
        let cluster = try ClusterFixture()
        let node = try cluster.start("n1")
        let common = ["--host", "127.0.0.1:\(node.port)", "--token", "tk", "--format", "json"]
        let set = try runKith(
            ["subscriptions", "set", "crm", "--url", "http://127.0.0.1:9/h", "--purpose", "support", "--events", "Order Completed"] + common)
        #expect(set.status == 0 && set.output.contains("whsec_") && set.output.contains("Order Completed"), "\(set)")
        let list = try runKith(["subscriptions", "list"] + common)
        #expect(list.status == 0 && list.output.contains(#""name":"crm""#) && !list.output.contains("whsec_"), "\(list)")
        let status = try runKith(["subscriptions", "status", "crm"] + common)
        #expect(status.status == 0 && status.output.contains(#""deliveredBy":"n1""#), "\(status)")
        #expect(try runKith(["subscriptions", "replay", "crm"] + common).output.contains("replaying"))
        #expect(try runKith(["subscriptions", "delete", "crm"] + common).status == 0)
        let gone = try runKith(["subscriptions", "status", "crm"] + common)
        #expect(gone.status == 1 && gone.error.contains("no subscription"), "\(gone)")
        #expect(try runKith(["subscriptions", "set", "crm", "--purpose", "support"] + common).status == 64)
        let https = try runKith(["subscriptions", "set", "crm", "--url", "https://x/h", "--purpose", "support"] + common)
        #expect(https.status == 1 && https.error.contains("TLS"), "\(https)")
        #expect(try runKith(["subscriptions", "frobnicate"] + common).status == 64)
    }
}
