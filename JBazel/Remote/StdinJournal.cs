namespace Rbs.JBazel.Remote;

/// <summary>
/// jbazel's standard input as sent to the agent, kept (the last <see cref="RetainedBytes"/>) so that after a reattach
/// the bytes the agent did not receive can be sent again from the agent's stdin offset. The reader thread appends and
/// waits while the sender is more than <see cref="UnsentLimit"/> behind (backpressure as before); each call's sender
/// follows from the offset the agent reported.
/// </summary>
internal sealed class StdinJournal
{
    /// <summary>4 MiB of stdin already sent stay resendable.</summary>
    public const long RetainedBytes = 4L * 1024 * 1024;

    /// <summary>The reader stops reading stdin while this much is not yet sent: 1 MiB.</summary>
    public const long UnsentLimit = 1024 * 1024;

    private readonly object _lock = new();
    private readonly LinkedList<(long Offset, byte[] Bytes)> _chunks = new();
    private TaskCompletionSource _changed = NewSignal();
    private long _end;
    private long _sent;
    private bool _eof;

    public long End
    {
        get
        {
            lock (_lock)
            {
                return _end;
            }
        }
    }

    /// <summary>Blocks the calling (reader) thread while too much is unsent; false once <paramref name="cancellationToken"/> fires.</summary>
    public bool Append(byte[] bytes, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task changed;
            lock (_lock)
            {
                if (_end - _sent <= UnsentLimit)
                {
                    _chunks.AddLast((_end, bytes));
                    _end += bytes.Length;
                    while (_chunks.First is { } first && _end - (first.Value.Offset + first.Value.Bytes.Length) > RetainedBytes && first.Value.Offset + first.Value.Bytes.Length <= _sent)
                    {
                        _chunks.RemoveFirst();
                    }

                    Pulse();
                    return true;
                }

                changed = _changed.Task;
            }

            try
            {
                changed.Wait(cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return false;
            }
        }
    }

    public void AppendEof()
    {
        lock (_lock)
        {
            _eof = true;
            Pulse();
        }
    }

    /// <summary>
    /// The next chunk after <paramref name="offset"/>: true with bytes, true with an empty array at end of input, or
    /// false with a task to wait on. Throws when the bytes after <paramref name="offset"/> are no longer kept.
    /// </summary>
    public bool TryNext(long offset, out ReadOnlyMemory<byte> bytes, out bool eof, out Task changed)
    {
        lock (_lock)
        {
            changed = _changed.Task;
            eof = false;
            bytes = default;
            if (offset < _end)
            {
                foreach (var (start, chunk) in _chunks)
                {
                    if (start + chunk.Length > offset)
                    {
                        if (start > offset)
                        {
                            break;
                        }

                        bytes = chunk.AsMemory((int)(offset - start));
                        return true;
                    }
                }

                throw new InvalidOperationException($"stdin bytes from {offset} are no longer kept (jbazel keeps the last {RetainedBytes} bytes).");
            }

            if (_eof)
            {
                eof = true;
                return true;
            }

            return false;
        }
    }

    /// <summary>The current call has written everything before <paramref name="offset"/>.</summary>
    public void Sent(long offset)
    {
        lock (_lock)
        {
            _sent = Math.Max(_sent, offset);
            Pulse();
        }
    }

    /// <summary>A new call resumes at the agent's offset: what it did not receive counts as unsent again.</summary>
    public void ResetSent(long offset)
    {
        lock (_lock)
        {
            _sent = offset;
            Pulse();
        }
    }

    private void Pulse()
    {
        var old = _changed;
        _changed = NewSignal();
        old.TrySetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
