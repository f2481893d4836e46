import Dispatch
import Synchronization

/// Runs `body` as a job of the one writer (`perform`, queued behind what is already waiting) and
/// waits for its outcome on the caller's thread, which must not be an event loop. Nil when the
/// writer refused the job (it is stopping).
func runOnWriter<T: Sendable>(
    _ perform: (@escaping @Sendable () -> Void) -> Bool, _ body: @escaping @Sendable () throws -> T
) -> Result<T, any Error>? {
    let done = DispatchSemaphore(value: 0)
    let outcome = Mutex<Result<T, any Error>?>(nil)
    let accepted = perform {
        outcome.withLock { $0 = Result { try body() } }
        done.signal()
    }
    guard accepted else { return nil }
    done.wait()
    guard let result = outcome.withLock({ $0 }) else { preconditionFailure("a writer job signalled without an outcome") }
    return result
}
