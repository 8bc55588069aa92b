//! An El Torito (no-emulation) ISO made with `xorriso`, whose boot
//! program prints, through COM1, the sums of blocks it reads with BIOS
//! int 13h; and what it must print for a given ISO.  vioscsi's tests and
//! the daemon e2e boot it.
#![allow(dead_code)]

use libtest_mimic::Failed;
use std::path::Path;
use std::process::Command;

/// A CD-ROM block.
pub const BLOCK: usize = 2048;

pub fn xorshift_bytes(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The lines of `text` that start with `prefix`, without CRs.
pub fn lines_with(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// The int 13h reads the boot program makes: (LBA, 2048-byte blocks).
pub type Reads = Vec<(u32, u16)>;

/// The boot program's checksum of a buffer: rotate left 5, add the byte.
pub fn boot_sum(data: &[u8]) -> u32 {
    data.iter()
        .fold(0u32, |s, &b| s.rotate_left(5).wrapping_add(u32::from(b)))
}

/// A no-emulation boot program, loaded by SeaBIOS at 07C0:0000: it prints
/// `eltorito: booted`, then for each read a line with its checksum (or
/// the int 13h error code), then `eltorito: done`, and halts.  It only
/// uses absolute addresses with DS = 0 and relative jumps, so it runs
/// wherever it is loaded.
pub fn boot_program(reads: &[(u32, u16)]) -> Result<Vec<u8>, Failed> {
    let mut code = sum_program(reads, BLOCK, "eltorito")?;
    if code.len() > 4 * 512 {
        return Err(format!("boot program of {} bytes is over 2048", code.len()).into());
    }
    code.resize(4 * 512, 0);
    Ok(code)
}

/// The program of [`boot_program`] for a drive of `block`-byte blocks,
/// its lines starting with `tag:`; at most 64 KiB per read.
pub fn sum_program(reads: &[(u32, u16)], block: usize, tag: &str) -> Result<Vec<u8>, Failed> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16)?;
    let print = |a: &mut CodeAssembler, s: &str| -> Result<(), IcedError> {
        a.mov(dx, 0x3f8)?;
        for b in s.bytes() {
            a.mov(al, i32::from(b))?;
            a.out(dx, al)?;
        }
        Ok(())
    };
    // Prints the low `digits` hex digits of EBX (top first).
    let hex = |a: &mut CodeAssembler, digits: u32| -> Result<(), IcedError> {
        let mut digit = a.create_label();
        let mut out = a.create_label();
        if digits < 8 {
            a.rol(ebx, 32 - 4 * digits)?;
        }
        a.mov(cx, digits)?;
        a.mov(dx, 0x3f8)?;
        a.set_label(&mut digit)?;
        a.rol(ebx, 4)?;
        a.mov(al, bl)?;
        a.and(al, 0xf)?;
        a.add(al, 0x30)?;
        a.cmp(al, 0x39)?;
        a.jbe(out)?;
        a.add(al, 7)?;
        a.set_label(&mut out)?;
        a.out(dx, al)?;
        a.loop_(digit)?;
        Ok(())
    };
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7000)?;
    a.sti()?;
    // The boot drive, kept for each int 13h.
    a.mov(byte_ptr(0x6000), dl)?;
    // On a line of its own: SeaBIOS's "Booting from" has no newline.
    print(&mut a, &format!("\n{tag}: booted\n"))?;
    for &(lba, count) in reads {
        let mut fail = a.create_label();
        let mut next = a.create_label();
        let mut sum = a.create_label();
        print(&mut a, &format!("{tag}: lba {lba} count {count}: "))?;
        // The disk address packet at 0:6010: 16 bytes, count, buffer
        // 1000:0000, LBA.
        a.mov(word_ptr(0x6010), 0x10)?;
        a.mov(word_ptr(0x6012), i32::from(count))?;
        a.mov(word_ptr(0x6014), 0)?;
        a.mov(word_ptr(0x6016), 0x1000)?;
        a.mov(dword_ptr(0x6018), lba as i32)?;
        a.mov(dword_ptr(0x601c), 0)?;
        a.mov(si, 0x6010)?;
        a.mov(dl, byte_ptr(0x6000))?;
        a.mov(ah, 0x42)?;
        a.int(0x13)?;
        a.jc(fail)?;
        // Sum count * 2048 bytes at 1000:0000.
        a.mov(ax, 0x1000)?;
        a.mov(ds, ax)?;
        a.xor(si, si)?;
        a.xor(ebx, ebx)?;
        a.mov(cx, i32::from(count) * block as i32)?;
        a.set_label(&mut sum)?;
        a.movzx(eax, byte_ptr(si))?;
        a.rol(ebx, 5)?;
        a.add(ebx, eax)?;
        a.inc(si)?;
        a.loop_(sum)?;
        a.xor(ax, ax)?;
        a.mov(ds, ax)?;
        print(&mut a, "sum ")?;
        hex(&mut a, 8)?;
        a.jmp(next)?;
        a.set_label(&mut fail)?;
        a.movzx(ebx, ah)?;
        print(&mut a, "error ")?;
        hex(&mut a, 2)?;
        a.set_label(&mut next)?;
        print(&mut a, "\n")?;
    }
    print(&mut a, &format!("{tag}: done\n"))?;
    let mut halt = a.create_label();
    a.cli()?;
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    Ok(a.assemble(0)?)
}

pub fn missing_xorriso() -> Option<String> {
    let ok = Command::new("xorriso")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| "needs xorriso (Debian package xorriso)".to_string())
}

/// Makes the ISO in `dir`: `boot.bin` as the no-emulation boot image
/// (4 virtual sectors) and `data.bin`.
pub fn xorriso(dir: &Path, iso: &Path) -> Result<(), Failed> {
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "VMDTEST", "-o"])
        .arg(iso)
        .args(["-b", "boot.bin", "-no-emul-boot", "-boot-load-size", "4"])
        .arg(dir.join("root"))
        .output()
        .map_err(|e| format!("xorriso: {e}"))?;
    if !out.status.success() {
        return Err(format!("xorriso failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Where `data` starts in `iso`, in blocks.
pub fn find_blocks(iso: &[u8], data: &[u8]) -> Option<usize> {
    (0..iso.len() / BLOCK).find(|&b| iso[b * BLOCK..].starts_with(data))
}

/// Builds the ISO twice: first with a placeholder boot program to learn
/// where the data file and the end are, then with the program that reads
/// them (same sizes and names, so the same layout: checked).  Returns the
/// ISO and the reads.
pub fn eltorito_iso(dir: &Path) -> Result<(Vec<u8>, Reads), Failed> {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let data = xorshift_bytes(48 * BLOCK, 0x1234_5678_9abc_def1);
    std::fs::write(root.join("data.bin"), &data).map_err(|e| format!("data.bin: {e}"))?;
    let iso_path = dir.join("eltorito.iso");
    let build = |reads: &[(u32, u16)]| -> Result<Vec<u8>, Failed> {
        std::fs::write(root.join("boot.bin"), boot_program(reads)?)
            .map_err(|e| format!("boot.bin: {e}"))?;
        let _ = std::fs::remove_file(&iso_path);
        xorriso(dir, &iso_path)?;
        Ok(std::fs::read(&iso_path).map_err(|e| format!("{}: {e}", iso_path.display()))?)
    };
    // The placeholder makes the same number of reads.
    let first = build(&[(0, 1); 6])?;
    let at = find_blocks(&first, &data).ok_or("data.bin not found in the ISO")? as u32;
    let end = (first.len() / BLOCK) as u32;
    let reads = vec![
        (16, 1),       // the primary volume descriptor
        (at, 16),      // data.bin
        (at + 16, 16), // data.bin
        (at + 40, 8),  // data.bin's last blocks
        (end - 1, 1),  // the last block
        (end - 1, 2),  // past the end
    ];
    let iso = build(&reads)?;
    if iso.len() != first.len() || find_blocks(&iso, &data) != Some(at as usize) {
        return Err("xorriso laid the second ISO out differently".into());
    }
    Ok((iso, reads))
}

/// What the boot program must print for `iso`: the sums of the blocks it
/// reads, "error" (without SeaBIOS's code) for a read past the end.
pub fn eltorito_lines(iso: &[u8], reads: &[(u32, u16)]) -> Vec<String> {
    sum_lines(iso, reads, BLOCK, "eltorito")
}

/// What [`sum_program`] must print for a drive holding `image`.
pub fn sum_lines(image: &[u8], reads: &[(u32, u16)], block: usize, tag: &str) -> Vec<String> {
    let mut want = vec![format!("{tag}: booted")];
    let end = (image.len() / block) as u32;
    for &(lba, count) in reads {
        let (l, c) = (lba as usize, count as usize);
        want.push(if lba + u32::from(count) <= end {
            format!(
                "{tag}: lba {lba} count {count}: sum {:08X}",
                boot_sum(&image[l * block..(l + c) * block])
            )
        } else {
            format!("{tag}: lba {lba} count {count}: error")
        });
    }
    want.push(format!("{tag}: done"));
    want
}

/// The lines with int 13h's error code cut off.
pub fn without_error_codes(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l.find(": error ") {
            Some(i) => l[..i + ": error".len()].to_string(),
            None => l.clone(),
        })
        .collect()
}
