import Foundation
import Synchronization

/// The thread a store's write transactions belong to, once a node's writer claims the store
/// (`ProfileStore.claimWriter`). One writer is a design rule (docs/architecture.md): group
/// commit's latency must depend only on what its queue holds, never on a write it cannot see.
/// Checked in debug builds, where every test runs; a store nobody claimed (tools, tests of
/// the store alone) may be written from any thread.
package final class WriterClaim: Sendable {
    private let owner = Mutex<pthread_t?>(nil)

    package init() {}

    package func claim() { owner.withLock { $0 = pthread_self() } }

    /// Stops a debug build when a write transaction starts off the claimed thread.
    package func check() {
        assert(
            owner.withLock { owner in owner.map { pthread_equal($0, pthread_self()) != 0 } ?? true },
            "a write transaction started on thread '\(Thread.current.name ?? "unnamed")', not on the store's one writer")
    }
}
