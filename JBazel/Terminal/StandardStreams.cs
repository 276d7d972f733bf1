using System.Text;

namespace Rbs.JBazel.Terminal;

/// <summary>
/// jbazel's standard streams as raw, unbuffered byte streams on file descriptors 0, 1 and 2.
/// </summary>
/// <remarks>
/// See <see cref="FileDescriptorStream"/> for why these are not the framework's console or file streams.
/// Nothing here encodes text except <see cref="WriteErrorLine"/> and <see cref="WriteOutput"/>, which
/// are for jbazel's own messages.
/// </remarks>
internal sealed class StandardStreams(Stream input, Stream output, Stream error) : IDisposable
{
    private readonly Lock _errorLock = new();

    public Stream Input { get; } = input;

    public Stream Output { get; } = output;

    public Stream Error { get; } = error;

    public static StandardStreams OpenProcessStreams() =>
        new(Open(0, FileAccess.Read), Open(1, FileAccess.Write), Open(2, FileAccess.Write));

    /// <summary>Writes one UTF-8 line to standard error; never throws (there is nowhere left to report to).</summary>
    public void WriteErrorLine(string line)
    {
        var bytes = Encoding.UTF8.GetBytes(line + "\n");
        lock (_errorLock)
        {
            try
            {
                Error.Write(bytes);
                Error.Flush();
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>Writes UTF-8 text to standard output (help, version).</summary>
    public void WriteOutput(string text)
    {
        try
        {
            Output.Write(Encoding.UTF8.GetBytes(text));
            Output.Flush();
        }
        catch (IOException)
        {
        }
    }

    public void Dispose()
    {
        Input.Dispose();
        Output.Dispose();
        Error.Dispose();
    }

    private static Stream Open(int fd, FileAccess access) =>
        OperatingSystem.IsWindows()
            ? (access == FileAccess.Read ? Console.OpenStandardInput() : fd == 1 ? Console.OpenStandardOutput() : Console.OpenStandardError())
            : new FileDescriptorStream(fd, canRead: access == FileAccess.Read);
}
