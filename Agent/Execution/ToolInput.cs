namespace Rbs.Agent.Execution;

/// <summary>
/// The tool's stdin as the client's frames see it: a pipe, or the keyboard of its pseudo-terminal. A pipe ends by
/// being closed; a terminal stays open for the whole session, so its end of input is the terminal's VEOF (^D) typed
/// once, which a reader in canonical mode sees as end of file, as it would locally.
/// </summary>
internal sealed class ToolInput(ToolProcess process)
{
    public bool IsOpen { get; private set; } = process.StandardInput is not null || process.Terminal is not null;

    /// <summary>Writes (blocking while the tool does not read: backpressure to the client through HTTP/2 flow control).</summary>
    /// <returns>False when the tool closed its stdin or exited; later bytes are dropped.</returns>
    public async Task<bool> WriteAsync(ReadOnlyMemory<byte> bytes)
    {
        try
        {
            if (process.StandardInput is { } pipe)
            {
                await pipe.WriteAsync(bytes, process.ExitedToken);
            }
            else if (process.Terminal is { } terminal)
            {
                // poll(2)-based, so it ends when the tool exits; off the request reader's thread.
                await Task.Run(() => terminal.Write(bytes.Span, process.ExitedToken), process.ExitedToken);
            }

            return true;
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
        {
            IsOpen = false;
            return false;
        }
    }

    public async Task CloseAsync()
    {
        if (!IsOpen)
        {
            return;
        }

        if (process.StandardInput is { } pipe)
        {
            IsOpen = false;
            await pipe.DisposeAsync();
        }
        else if (process.Terminal is { } terminal)
        {
            await WriteAsync(new[] { terminal.EndOfFile });
            IsOpen = false;
        }
    }
}
