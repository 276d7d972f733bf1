using System.Buffers;
using Microsoft.Win32.SafeHandles;

namespace Rbs.Agent.Execution.Reattach;

/// <summary>
/// The output of one reattachable command, stdout and stderr in the order the tool wrote them, kept until the client
/// has it: in memory up to a bound, then in a spill file up to a limit. Offsets are byte counts per stream, so a
/// client that attaches again with the counts it has gets every byte exactly once, in order.
/// </summary>
/// <remarks>
/// One reader at a time (the attached call) follows a <see cref="Cursor"/>. What lies before the client's
/// acknowledged offsets is forgotten; once nothing spilled is still needed, the spill file starts over, so it stays
/// small while a client keeps up. Thread-safe: the command's feeder appends while the call reads and acknowledges.
/// <para>
/// Memory comes from <see cref="ArrayPool{T}.Shared"/> and goes back once the client has the bytes (or they are
/// spilled): a 1 GiB stream otherwise allocated a new large-object array per 256 KiB chunk, and the gen-2 collections
/// they caused took a third of the stream's throughput. An entry the reader is still writing (<see
/// cref="Cursor.InFlight"/>) is never returned to the pool; if it is dropped meanwhile the GC takes it.
/// </para>
/// </remarks>
internal sealed class OutputJournal(long memoryLimit, long spillLimit, string spillDirectory) : IDisposable
{
    private readonly object _lock = new();
    private readonly List<Entry> _entries = [];
    private TaskCompletionSource _changed = NewSignal();
    private long _stdoutEnd;
    private long _stderrEnd;
    private long _stdoutForgotten;
    private long _stderrForgotten;
    private long _memoryBytes;
    private int _firstInMemory;
    private SafeFileHandle? _spill;
    private string? _spillPath;
    private long _spillLength;
    private Cursor? _reader;
    private bool _disposed;

    /// <summary>Set once output had to be dropped because the spill file was full.</summary>
    public bool Overflowed { get; private set; }

    /// <summary>The spill file, while there is one (for tests and logs).</summary>
    public string? SpillPath
    {
        get
        {
            lock (_lock)
            {
                return _spillPath;
            }
        }
    }

    public long StdoutEnd
    {
        get
        {
            lock (_lock)
            {
                return _stdoutEnd;
            }
        }
    }

    public long StderrEnd
    {
        get
        {
            lock (_lock)
            {
                return _stderrEnd;
            }
        }
    }

    /// <summary>Bytes spilled to disk so far and still held (for logs).</summary>
    public long SpilledBytes
    {
        get
        {
            lock (_lock)
            {
                return _spillLength;
            }
        }
    }

    /// <summary>Appends a copy of what the tool wrote; false (and the bytes dropped) when the spill limit is reached.</summary>
    public bool Append(bool stdout, ReadOnlySpan<byte> bytes)
    {
        lock (_lock)
        {
            if (_disposed || Overflowed)
            {
                return false;
            }

            var offset = stdout ? _stdoutEnd : _stderrEnd;
            var data = ArrayPool<byte>.Shared.Rent(bytes.Length);
            bytes.CopyTo(data);
            _entries.Add(new Entry(stdout, offset, bytes.Length) { Data = data });
            _memoryBytes += bytes.Length;
            if (stdout)
            {
                _stdoutEnd += bytes.Length;
            }
            else
            {
                _stderrEnd += bytes.Length;
            }

            while (_memoryBytes > memoryLimit && _firstInMemory < _entries.Count)
            {
                if (!SpillOldest())
                {
                    Overflowed = true;
                    break;
                }
            }

            Pulse();
            return !Overflowed;
        }
    }

    /// <summary>The client has written this much of each stream: what lies before is forgotten.</summary>
    public void Acknowledge(long stdoutOffset, long stderrOffset)
    {
        lock (_lock)
        {
            _stdoutForgotten = Math.Clamp(stdoutOffset, _stdoutForgotten, _stdoutEnd);
            _stderrForgotten = Math.Clamp(stderrOffset, _stderrForgotten, _stderrEnd);
            var drop = 0;
            while (drop < _entries.Count)
            {
                var entry = _entries[drop];
                if (entry.End > (entry.Stdout ? _stdoutForgotten : _stderrForgotten))
                {
                    break;
                }

                if (entry.Data is not null)
                {
                    _memoryBytes -= entry.Length;
                    Release(entry);
                }

                drop++;
            }

            if (drop == 0)
            {
                return;
            }

            _entries.RemoveRange(0, drop);
            _firstInMemory = Math.Max(0, _firstInMemory - drop);
            if (_reader is { } reader)
            {
                reader.Index = Math.Max(0, reader.Index - drop);
            }

            if (_firstInMemory == 0)
            {
                // Nothing spilled is needed any more: the file starts over.
                _spillLength = 0;
            }

            Pulse();
        }
    }

    /// <summary>
    /// Starts reading after the given offsets (the client has everything before them). Null when the journal no
    /// longer has what follows them (acknowledged before, or dropped); the caller says which.
    /// </summary>
    public Cursor? BeginRead(long stdoutOffset, long stderrOffset)
    {
        lock (_lock)
        {
            if (_disposed || stdoutOffset < _stdoutForgotten || stderrOffset < _stderrForgotten || stdoutOffset > _stdoutEnd || stderrOffset > _stderrEnd)
            {
                return null;
            }

            // The client has these bytes: they need not be kept for it.
            _reader = new Cursor(stdoutOffset, stderrOffset);
            Pulse();
            return _reader;
        }
    }

    /// <summary>The reader is gone (its call ended): the feeder no longer waits for it.</summary>
    public void EndRead(Cursor cursor)
    {
        lock (_lock)
        {
            if (ReferenceEquals(_reader, cursor))
            {
                _reader = null;
                Pulse();
            }
        }
    }

    /// <summary>
    /// The next bytes for the reader: a stdout or stderr chunk, or false with a task that completes when there may be
    /// more (an append, an acknowledgement).
    /// </summary>
    public bool TryRead(Cursor cursor, out bool stdout, out ReadOnlyMemory<byte> bytes, out Task changed)
    {
        lock (_lock)
        {
            while (cursor.Index < _entries.Count)
            {
                var entry = _entries[cursor.Index];
                var sent = entry.Stdout ? cursor.Stdout : cursor.Stderr;
                if (entry.End <= sent)
                {
                    cursor.Index++;
                    continue;
                }

                var skip = (int)Math.Max(0, sent - entry.Offset);
                var data = entry.Data ?? ReadSpilled(entry);
                stdout = entry.Stdout;
                bytes = data.AsMemory(skip, entry.Length - skip);
                cursor.InFlight = entry;
                if (stdout)
                {
                    cursor.Stdout = entry.End;
                }
                else
                {
                    cursor.Stderr = entry.End;
                }

                cursor.Index++;
                changed = Task.CompletedTask;
                Pulse();
                return true;
            }

            stdout = false;
            bytes = default;
            changed = _changed.Task;
            return false;
        }
    }

    /// <summary>The reader's write of what <see cref="TryRead"/> gave it has completed: its memory may be reused.</summary>
    public void Sent(Cursor cursor)
    {
        lock (_lock)
        {
            cursor.InFlight = null;
        }
    }

    /// <summary>
    /// Completes when the attached reader is at most <paramref name="window"/> bytes behind, or when nobody is
    /// attached: a slow client slows the tool down (as without reattach), an absent one does not.
    /// </summary>
    public async Task WaitForReaderAsync(long window, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task changed;
            lock (_lock)
            {
                if (_disposed || _reader is null || (_stdoutEnd - _reader.Stdout) + (_stderrEnd - _reader.Stderr) <= window)
                {
                    return;
                }

                changed = _changed.Task;
            }

            await changed.WaitAsync(cancellationToken);
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (var entry in _entries)
            {
                Release(entry);
            }

            _entries.Clear();
            _memoryBytes = 0;
            _spill?.Dispose();
            if (_spillPath is not null)
            {
                try
                {
                    File.Delete(_spillPath);
                }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
                {
                    // Someone removed the directory already; nothing is left to delete.
                }

                _spillPath = null;
            }

            Pulse();
        }
    }

    private bool SpillOldest()
    {
        var entry = _entries[_firstInMemory];
        if (_spillLength + entry.Length > spillLimit)
        {
            return false;
        }

        if (_spill is null)
        {
            // Only the agent's user may read what its tools wrote.
            if (OperatingSystem.IsWindows())
            {
                Directory.CreateDirectory(spillDirectory);
            }
            else
            {
                Directory.CreateDirectory(spillDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }

            _spillPath = Path.Combine(spillDirectory, $"{Guid.NewGuid():N}.output");
            _spill = File.OpenHandle(_spillPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.None, preallocationSize: 0);
        }

        RandomAccess.Write(_spill, entry.Data.AsSpan(0, entry.Length), _spillLength);
        entry.FileOffset = _spillLength;
        _spillLength += entry.Length;
        _memoryBytes -= entry.Length;
        Release(entry);
        _firstInMemory++;
        return true;
    }

    /// <summary>Gives an entry's memory back to the pool, unless the reader may still be writing it (then the GC takes it).</summary>
    private void Release(Entry entry)
    {
        if (entry.Data is { } data && !ReferenceEquals(_reader?.InFlight, entry))
        {
            ArrayPool<byte>.Shared.Return(data);
        }

        entry.Data = null;
    }

    private byte[] ReadSpilled(Entry entry)
    {
        var data = new byte[entry.Length];
        var read = 0;
        while (read < data.Length)
        {
            var n = RandomAccess.Read(_spill!, data.AsSpan(read), entry.FileOffset + read);
            if (n == 0)
            {
                throw new IOException($"the spill file {_spillPath} is shorter than the output it holds.");
            }

            read += n;
        }

        return data;
    }

    private void Pulse()
    {
        var old = _changed;
        _changed = NewSignal();
        old.TrySetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Where the attached reader is: the bytes of each stream it has sent, and its place in the journal.</summary>
    internal sealed class Cursor(long stdout, long stderr)
    {
        public long Stdout { get; set; } = stdout;

        public long Stderr { get; set; } = stderr;

        public int Index { get; set; }

        /// <summary>The entry whose bytes the reader is writing now (until <see cref="Sent"/>); under the journal's lock.</summary>
        internal object? InFlight { get; set; }
    }

    private sealed class Entry(bool stdout, long offset, int length)
    {
        public bool Stdout { get; } = stdout;

        public long Offset { get; } = offset;

        public int Length { get; } = length;

        public long End => Offset + Length;

        /// <summary>The bytes (the first <see cref="Length"/> of a pooled array) while in memory; null once spilled or forgotten.</summary>
        public byte[]? Data { get; set; }

        public long FileOffset { get; set; }
    }
}
